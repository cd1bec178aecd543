//! The arguments of the attribute itself:
//! `#[durable(name = "...", retry = <expr>, crate = "path")]`.
//!
//! Every argument is optional. A mistake in one argument is reported and the
//! others are still read, so one build shows every mistake.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::{Expr, Ident, LitStr, Path, Token};

use crate::validate::Errors;

/// The arguments as the user wrote them, original tokens kept for spans.
#[derive(Default)]
pub(crate) struct Args {
    /// `name = "..."`: the stable name instances are stored under, instead
    /// of the fn's name. Emptiness is checked in `validate`.
    pub name: Option<LitStr>,
    /// `retry = <expr>`: the workflow's retry policy for its steps.
    pub retry: Option<Expr>,
    /// `crate = "path"`: where the `durable` crate is, for users who renamed
    /// or re-exported it; `::durable` when absent.
    pub krate: Option<Path>,
    /// `version = N`: the workflow's version (1 when absent); several
    /// versions of one name can be registered side by side.
    pub version: Option<syn::LitInt>,
    /// `allow = "nondeterminism"`: no determinism warnings for this fn.
    pub allow: Option<LitStr>,
    /// `timeout = "3d"`: the whole-workflow deadline of each instance, in
    /// milliseconds (checked here).
    pub timeout_ms: Option<u64>,
}

/// Every argument the attribute takes, as listed in messages.
const VALID: &str = "`name = \"...\"`, `version = <n>`, `retry = <RetryPolicy>`, `timeout = \"3d\"`, `allow = \"nondeterminism\"`, `crate = \"path\"`";

impl Args {
    /// Reads the tokens between the attribute's parentheses. Problems go to
    /// `errors`; the arguments that were fine are still returned.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Args {
        let mut args = Args::default();
        let parser = |input: ParseStream| {
            while !input.is_empty() {
                if let Err(error) = args.parse_one(input) {
                    errors.push(error);
                    skip_past_comma(input)?;
                }
            }
            Ok(())
        };
        if let Err(error) = parser.parse2(tokens) {
            errors.push(error);
        }
        args
    }

    /// Reads one `key = value` and the comma after it, if any.
    fn parse_one(&mut self, input: ParseStream) -> syn::Result<()> {
        // `crate` is a keyword, so read any identifier.
        let key = Ident::parse_any(input).map_err(|e| {
            syn::Error::new(e.span(), format!("expected an argument: one of {VALID}"))
        })?;
        let key_name = key.to_string();
        if !input.peek(Token![=]) {
            return Err(syn::Error::new_spanned(
                &key,
                match key_name.as_str() {
                    "name" => "`name` needs a value: `name = \"user-provisioning\"`".to_string(),
                    "retry" => {
                        "`retry` needs a value: `retry = RetryPolicy::default().max_attempts(5)`"
                            .to_string()
                    }
                    "crate" => "`crate` needs a value: `crate = \"::durable\"`".to_string(),
                    "version" => "`version` needs a value: `version = 2`".to_string(),
                    "timeout" => "`timeout` needs a value: `timeout = \"3d\"`".to_string(),
                    "allow" => "`allow` needs a value: `allow = \"nondeterminism\"`".to_string(),
                    _ => unknown(&key_name),
                },
            ));
        }
        input.parse::<Token![=]>()?;
        match key_name.as_str() {
            "name" => {
                let value = parse_string(input, "name", "`name = \"user-provisioning\"`")?;
                set_once(&mut self.name, value, &key)?;
            }
            "retry" => {
                let value: Expr = input.parse()?;
                set_once(&mut self.retry, value, &key)?;
            }
            "allow" => {
                let value = parse_string(input, "allow", "`allow = \"nondeterminism\"`")?;
                if value.value() != "nondeterminism" {
                    return Err(syn::Error::new(
                        value.span(),
                        "`allow` takes one value: `allow = \"nondeterminism\"` (no determinism warnings for this fn)",
                    ));
                }
                set_once(&mut self.allow, value, &key)?;
            }
            "timeout" => {
                let value = parse_string(input, "timeout", "`timeout = \"3d\"`")?;
                let ms = parse_duration_ms(&value.value()).ok_or_else(|| {
                    syn::Error::new(
                        value.span(),
                        "`timeout` is a number and a unit (ms, s, m, h or d), more than zero: \
                         `timeout = \"90s\"`, `timeout = \"3d\"`",
                    )
                })?;
                if self.timeout_ms.is_some() {
                    return Err(syn::Error::new_spanned(&key, "`timeout` is given twice"));
                }
                self.timeout_ms = Some(ms);
            }
            "version" => {
                let value: Expr = input.parse()?;
                let version = match &value {
                    Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Int(int),
                        ..
                    }) if int.base10_parse::<u32>().is_ok_and(|v| v >= 1) => int.clone(),
                    _ => {
                        return Err(syn::Error::new_spanned(
                            value,
                            "`version` must be an integer literal from 1 up, e.g. `version = 2`",
                        ));
                    }
                };
                set_once(&mut self.version, version, &key)?;
            }
            "crate" => {
                let value = parse_string(input, "crate", "`crate = \"::durable\"`")?;
                let path = value.parse_with(Path::parse_mod_style).map_err(|_| {
                    syn::Error::new(
                        value.span(),
                        "`crate` must be the path of the `durable` crate, e.g. `crate = \"::durable\"`",
                    )
                })?;
                set_once(&mut self.krate, path, &key)?;
            }
            _ => {
                // Read the value so the next argument is still checked.
                let _: Expr = input.parse()?;
                return Err(syn::Error::new_spanned(&key, unknown(&key_name)));
            }
        }
        if !input.is_empty() {
            input.parse::<Token![,]>()?;
        }
        Ok(())
    }
}

/// A duration such as `"90s"` or `"3d"` in milliseconds: a whole number
/// above zero and one unit (`ms`, `s`, `m`, `h`, `d`).
fn parse_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let scale = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number.checked_mul(scale).filter(|ms| *ms > 0)
}

/// The message for an argument the attribute does not take.
fn unknown(key: &str) -> String {
    format!("unknown `#[durable]` argument `{key}`; the valid arguments are {VALID}")
}

/// Reads a string literal for argument `key`, with an example in the error.
fn parse_string(input: ParseStream, key: &str, example: &str) -> syn::Result<LitStr> {
    if input.peek(LitStr) {
        return input.parse();
    }
    let found: Expr = input.parse()?;
    Err(syn::Error::new_spanned(
        found,
        format!("`{key}` must be a string literal, e.g. {example}"),
    ))
}

/// Stores an argument's value, refusing a second one for the same key.
fn set_once<T>(slot: &mut Option<T>, value: T, key: &Ident) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new_spanned(
            key,
            format!("`{key}` is given twice; keep one"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

/// Error recovery: skips what is left of a malformed argument, up to and
/// including the next top-level comma.
fn skip_past_comma(input: ParseStream) -> syn::Result<()> {
    input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tree, next)) = rest.token_tree() {
            rest = next;
            if matches!(tree, proc_macro2::TokenTree::Punct(punct) if punct.as_char() == ',') {
                break;
            }
        }
        Ok(((), rest))
    })
}

/// The default path of the runtime crate, `::durable`.
pub(crate) fn default_crate() -> Path {
    let durable = Ident::new("durable", Span::call_site());
    syn::parse_quote!(::#durable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse(tokens: TokenStream) -> (Args, Vec<String>) {
        let mut errors = Errors::default();
        let args = Args::parse(tokens, &mut errors);
        (args, errors.messages())
    }

    #[test]
    fn reads_every_argument() {
        let (args, errors) = parse(quote!(
            name = "user-provisioning",
            retry = RetryPolicy::default().max_attempts(5),
            crate = "::my::durable",
        ));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(args.name.unwrap().value(), "user-provisioning");
        assert!(args.retry.is_some());
        let krate = args.krate.unwrap();
        assert_eq!(quote!(#krate).to_string(), ":: my :: durable");
    }

    #[test]
    fn no_arguments_is_fine() {
        let (args, errors) = parse(TokenStream::new());
        assert!(errors.is_empty());
        assert!(args.name.is_none() && args.retry.is_none() && args.krate.is_none());
    }

    #[test]
    fn every_bad_argument_is_reported_and_good_ones_kept() {
        let (args, errors) = parse(quote!(
            nmae = "x",
            name = 5,
            retry = no_retry(),
            crate,
            name = "y",
            name = "z"
        ));
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].starts_with("unknown `#[durable]` argument `nmae`"));
        assert!(errors[0].contains(
            "`name = \"...\"`, `version = <n>`, `retry = <RetryPolicy>`, `timeout = \"3d\"`, `allow = \"nondeterminism\"`, `crate = \"path\"`"
        ));
        assert!(errors[1].starts_with("`name` must be a string literal"));
        assert!(errors[2].starts_with("`crate` needs a value"));
        assert_eq!(errors[3], "`name` is given twice; keep one");
        assert!(args.retry.is_some());
        assert_eq!(args.name.unwrap().value(), "y");
    }

    #[test]
    fn a_crate_path_must_parse() {
        let (_, errors) = parse(quote!(crate = "not a path"));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("`crate` must be the path"));
    }
}
