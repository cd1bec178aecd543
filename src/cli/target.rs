//! Where the command line's commands go: a running service's admin
//! endpoint, or a store or PostgreSQL schema opened here by an engine that
//! registers no workflow, served by the same API handler.

use std::time::Duration;

use serde_json::Value;

use super::{CliError, Res, TargetArgs};
use crate::Engine;
use crate::admin::{AdminOptions, ApiRequest, handle};

/// Where commands go: a running service, or a store opened here.
pub(super) enum Target {
    Remote {
        agent: ureq::Agent,
        base: String,
        token: Option<String>,
    },
    Local {
        engine: Option<Engine>,
        runtime: tokio::runtime::Runtime,
    },
}

const LOCAL_TOKEN: &str = "local";

impl Target {
    pub(super) fn open(args: &TargetArgs) -> Res<Target> {
        let given = [
            args.store.is_some(),
            args.url.is_some(),
            args.postgres.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(CliError::usage(
                "give one target: --store, --url or --postgres",
            ));
        }
        if let Some(url) = &args.postgres {
            return Target::postgres(url, &args.schema);
        }
        match (&args.store, &args.url) {
            (None, None) => Err(CliError::usage(
                "no target: give --url http://host:port/admin (a running service), --store PATH \
                 (an embedded store no process holds) or --postgres URL, or set DURABLE_URL / \
                 DURABLE_STORE / DURABLE_DATABASE_URL",
            )),
            (None, Some(url)) => Ok(Target::Remote {
                agent: ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(120)))
                    .build()
                    .into(),
                base: url.trim_end_matches('/').to_string(),
                token: args.token.clone(),
            }),
            (Some(path), _) => {
                if !path.exists() {
                    return Err(CliError::error(format!(
                        "no store at {} (the directory does not exist)",
                        path.display()
                    )));
                }
                let runtime = local_runtime()?;
                // No workflow is registered: nothing is resumed or run.
                let engine = runtime
                    .block_on(Engine::builder().path(path).open())
                    .map_err(|e| match e {
                        crate::Error::Store(crate::StoreError::Locked { .. }) => CliError::error(format!(
                            "{e}\nhint: a running service holds it; reach it through its admin endpoint with --url"
                        )),
                        e => CliError::error(e.to_string()),
                    })?;
                Ok(Target::Local {
                    engine: Some(engine),
                    runtime,
                })
            }
        }
    }

    /// A PostgreSQL schema, opened by an engine that registers no workflow:
    /// its claim rounds ask for instances of no workflow, so it claims and
    /// runs nothing, and other workers go on as before.
    #[cfg(feature = "postgres")]
    fn postgres(url: &str, schema: &str) -> Res<Target> {
        let runtime = local_runtime()?;
        let engine = runtime
            .block_on(Engine::builder().postgres(url).schema(schema).open())
            .map_err(|e| CliError::error(format!("--postgres: {e}")))?;
        Ok(Target::Local {
            engine: Some(engine),
            runtime,
        })
    }

    /// Without the feature `postgres`: a typed error saying how to get it.
    #[cfg(not(feature = "postgres"))]
    fn postgres(_url: &str, _schema: &str) -> Res<Target> {
        Err(CliError::error(
            "--postgres: this build of durable has no PostgreSQL backend; install it with \
             `cargo install durable --features cli,postgres`, or use --url with the service's \
             admin endpoint",
        ))
    }

    /// One API call: the JSON body of a success, or the error's message.
    pub(super) fn call(&self, post: bool, path: &str, query: &str, body: &[u8]) -> Res<Value> {
        let (status, value) = match self {
            Target::Local { engine, runtime } => {
                let engine = engine.as_ref().expect("open until dropped");
                let options = AdminOptions::new().token(LOCAL_TOKEN.to_string());
                let authorization = format!("Bearer {LOCAL_TOKEN}");
                runtime.block_on(handle(
                    engine,
                    &options,
                    ApiRequest {
                        post,
                        path,
                        query,
                        authorization: Some(&authorization),
                        body,
                    },
                ))
            }
            Target::Remote { agent, base, token } => {
                let url = if query.is_empty() {
                    format!("{base}{path}")
                } else {
                    format!("{base}{path}?{query}")
                };
                let auth = token.as_ref().map(|t| format!("Bearer {t}"));
                let result = if post {
                    let mut request = agent.post(&url).header("Content-Type", "application/json");
                    if let Some(auth) = &auth {
                        request = request.header("Authorization", auth);
                    }
                    request.send(body)
                } else {
                    let mut request = agent.get(&url);
                    if let Some(auth) = &auth {
                        request = request.header("Authorization", auth);
                    }
                    request.call()
                };
                let mut response =
                    result.map_err(|e| CliError::error(format!("cannot reach {url}: {e}")))?;
                let status = response.status().as_u16();
                let text = response
                    .body_mut()
                    .read_to_string()
                    .map_err(|e| CliError::error(format!("reading the answer of {url}: {e}")))?;
                let value = serde_json::from_str(&text).map_err(|_| {
                    CliError::error(format!(
                        "{url} answered {status} with something that is not the admin API's JSON \
                         (is the URL the admin endpoint's mount point?)"
                    ))
                })?;
                (status, value)
            }
        };
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            let message = value["error"]["message"]
                .as_str()
                .unwrap_or("the request failed")
                .to_string();
            Err(CliError::error(message))
        }
    }

    pub(super) fn close(mut self) {
        if let Target::Local { engine, runtime } = &mut self
            && let Some(engine) = engine.take()
        {
            runtime.block_on(engine.shutdown());
        }
    }

    pub(super) fn engine(&self) -> Option<&Engine> {
        match self {
            Target::Local { engine, .. } => engine.as_ref(),
            Target::Remote { .. } => None,
        }
    }

    /// Runs `future` on the local engine's runtime (only for `--store`).
    pub(super) fn block_on<F: std::future::Future>(&self, future: F) -> Option<F::Output> {
        match self {
            Target::Local { runtime, .. } => Some(runtime.block_on(future)),
            Target::Remote { .. } => None,
        }
    }
}

/// The runtime of a store or database opened by the command line itself.
fn local_runtime() -> Res<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| CliError::error(format!("cannot start a runtime: {e}")))
}
