//! Whether a workflow's output is an `Err`, found without knowing its type:
//! serde serializes every `Result` as the enum `Result` with the variants
//! `Ok` and `Err`, so a serializer that looks at the first call alone tells.

use std::fmt;

use serde::Serialize;
use serde::ser::{self, Impossible};

/// Whether `value` is a `Result::Err` (false for any other value).
pub(crate) fn is_err<T: Serialize + ?Sized>(value: &T) -> bool {
    matches!(value.serialize(Probe), Ok(true))
}

struct Probe;

#[derive(Debug)]
struct NotAResult;

impl fmt::Display for NotAResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a Result")
    }
}

impl std::error::Error for NotAResult {}

impl ser::Error for NotAResult {
    fn custom<M: fmt::Display>(_: M) -> Self {
        NotAResult
    }
}

type Never = Impossible<bool, NotAResult>;

macro_rules! not_a_result {
    ($($name:ident($($arg:ty),*);)*) => {
        $(fn $name(self, $(_: $arg),*) -> Result<bool, NotAResult> { Ok(false) })*
    };
}

impl ser::Serializer for Probe {
    type Ok = bool;
    type Error = NotAResult;
    type SerializeSeq = Never;
    type SerializeTuple = Never;
    type SerializeTupleStruct = Never;
    type SerializeTupleVariant = Never;
    type SerializeMap = Never;
    type SerializeStruct = Never;
    type SerializeStructVariant = Never;

    not_a_result! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<bool, NotAResult> {
        Ok(false)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<bool, NotAResult> {
        Ok(false)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _: u32,
        variant: &'static str,
        _: &T,
    ) -> Result<bool, NotAResult> {
        Ok(name == "Result" && variant == "Err")
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Never, NotAResult> {
        Err(NotAResult)
    }

    fn serialize_tuple(self, _: usize) -> Result<Never, NotAResult> {
        Err(NotAResult)
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Never, NotAResult> {
        Err(NotAResult)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Never, NotAResult> {
        Err(NotAResult)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Never, NotAResult> {
        Err(NotAResult)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Never, NotAResult> {
        Err(NotAResult)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Never, NotAResult> {
        Err(NotAResult)
    }
}

#[cfg(test)]
mod tests {
    use super::is_err;

    #[test]
    fn tells_err_from_everything_else() {
        assert!(is_err(&Err::<u32, String>("no".into())));
        assert!(!is_err(&Ok::<u32, String>(1)));
        assert!(!is_err(&Ok::<Vec<u8>, ()>(vec![1, 2])));
        assert!(is_err(&Err::<(), Vec<u8>>(vec![1])));
        assert!(!is_err(&5u64));
        assert!(!is_err(&"Err"));
        assert!(!is_err(&(1, 2)));
        assert!(!is_err(&Some(Err::<(), ()>(()))));
    }
}
