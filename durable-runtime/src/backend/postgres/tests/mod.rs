//! Tests against a real PostgreSQL server.
