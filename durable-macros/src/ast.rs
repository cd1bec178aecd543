//! The front end: the `#[durable]` fn taken apart into the pieces the
//! expansion reuses, each with its original tokens (and so its spans).
//!
//! The signature is checked here, where it is read; every problem is pushed
//! to the one accumulator so that one build reports them all.

use proc_macro2::{Delimiter, Group, Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::parse::{ParseStream, Parser};
use syn::visit::Visit;
use syn::{
    Attribute, FnArg, GenericParam, Ident, Pat, PatType, ReturnType, Signature, Token, Type,
    Visibility,
};

use crate::validate::Errors;

/// A `#[durable]` async fn.
pub(crate) struct Workflow {
    /// The fn's own attributes (doc comments, lints, `cfg`...).
    pub attrs: Vec<Attribute>,
    /// The fn's visibility, which the workflow value keeps.
    pub vis: Visibility,
    /// The fn's name: the workflow value's name, and its stored name unless
    /// `name = "..."` overrides it.
    pub ident: Ident,
    /// The signature as written, for the fallback of a method (which must
    /// stay a method: a struct cannot be declared in an `impl` block).
    pub sig: Signature,
    /// Whether the fn has a `self` receiver (an error).
    pub is_method: bool,
    /// The first parameter, `ctx: &Ctx`; `None` when the signature has no
    /// usable one.
    pub ctx: Option<Param>,
    /// The second parameter, the input; `None` when missing or unusable.
    pub input: Option<Param>,
    /// The return type (`()` when none is written); `None` when unusable.
    pub output: Option<Type>,
    /// The body's braces and contents, as written.
    pub block: Group,
}

/// One parameter, re-bound by the expansion with a `let`.
pub(crate) struct Param {
    /// Attributes on the parameter (`#[allow(..)]`), kept on the `let`.
    pub attrs: Vec<Attribute>,
    /// The user's pattern, e.g. `ctx`, `_ctx`, `mut signup`.
    pub pat: Pat,
    /// The user's type, e.g. `&Ctx`, `Signup`.
    pub ty: Type,
}

impl Workflow {
    /// Reads the item under the attribute. Only a non-fn item is fatal (the
    /// `Err`); problems with the signature go to `errors` and the pieces
    /// that are fine are kept. The body is not parsed, only kept as tokens,
    /// so that a syntax error in it is reported by the compiler as usual.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> syn::Result<Workflow> {
        let (attrs, vis, sig, block) = parse_fn.parse2(tokens)?;
        check_qualifiers(&sig, errors);
        let generic = check_generics(&sig, errors);
        let (ctx, input) = params(&sig, errors);
        let input = input.filter(|input| !generic && owned(&input.ty, "input", errors));
        let output = match &sig.output {
            ReturnType::Default => syn::parse_quote!(()),
            ReturnType::Type(_, ty) => (**ty).clone(),
        };
        let output = Some(output).filter(|output| !generic && owned(output, "output", errors));
        let is_method = matches!(sig.inputs.first(), Some(FnArg::Receiver(_)));
        Ok(Workflow {
            attrs,
            vis,
            ident: sig.ident.clone(),
            sig,
            is_method,
            ctx,
            input,
            output,
            block,
        })
    }

    /// Whether the signature was fine for the full expansion.
    pub(crate) fn is_complete(&self) -> bool {
        self.ctx.is_some() && self.input.is_some() && self.output.is_some()
    }
}

/// Splits a fn item into its attributes, visibility, signature and body.
fn parse_fn(input: ParseStream) -> syn::Result<(Vec<Attribute>, Visibility, Signature, Group)> {
    let attrs = input.call(Attribute::parse_outer)?;
    let vis: Visibility = input.parse()?;
    let looks_like_fn = input.peek(Token![fn])
        || input.peek(Token![async])
        || input.peek(Token![const])
        || input.peek(Token![unsafe])
        || input.peek(Token![extern]);
    if !looks_like_fn {
        let span = input
            .cursor()
            .token_tree()
            .map_or_else(Span::call_site, |(tree, _)| tree.span());
        return Err(syn::Error::new(
            span,
            "#[durable] can only be applied to an `async fn(ctx: &Ctx, input: T)`",
        ));
    }
    let sig: Signature = input.parse()?;
    let block: Group = match input.parse::<TokenTree>() {
        Ok(TokenTree::Group(group)) if group.delimiter() == Delimiter::Brace => group,
        _ => {
            return Err(syn::Error::new_spanned(
                &sig.ident,
                "a #[durable] fn needs a body: `{ ... }`",
            ));
        }
    };
    if !input.is_empty() {
        return Err(input.error("unexpected tokens after the fn's body"));
    }
    Ok((attrs, vis, sig, block))
}

/// `async` is required; `const`, `unsafe` and `extern` are refused. None of
/// these stops the expansion: the body runs in an async block either way.
fn check_qualifiers(sig: &Signature, errors: &mut Errors) {
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new_spanned(
            sig.fn_token,
            "#[durable] requires an `async fn`; add `async` before `fn`",
        ));
    }
    if let Some(constness) = &sig.constness {
        errors.push(syn::Error::new_spanned(
            constness,
            "a #[durable] fn cannot be `const`; remove `const`",
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.push(syn::Error::new_spanned(
            unsafety,
            "a #[durable] fn cannot be `unsafe`; remove `unsafe` and use an `unsafe` block inside",
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            "a #[durable] fn cannot have an ABI; remove the `extern`",
        ));
    }
}

/// Generic and lifetime parameters are refused. Returns whether there were
/// any (then the input and output types are not usable).
fn check_generics(sig: &Signature, errors: &mut Errors) -> bool {
    let generics = &sig.generics;
    let mut refused = false;
    if !generics.params.is_empty() {
        refused = true;
        let only_lifetimes = generics
            .params
            .iter()
            .all(|param| matches!(param, GenericParam::Lifetime(_)));
        let message = if only_lifetimes {
            "#[durable] fns cannot have lifetime parameters: the context is borrowed for the \
             whole run and the input is owned (it is stored, and read back on resume); remove \
             the lifetime parameters and write `ctx: &Ctx`"
        } else {
            "#[durable] fns cannot be generic: instances are stored and resumed by the \
             workflow's name, so its input and output must be concrete types; remove the \
             generic parameters"
        };
        errors.push(syn::Error::new_spanned(generics, message));
    }
    if let Some(where_clause) = &generics.where_clause {
        refused = true;
        errors.push(syn::Error::new_spanned(
            where_clause.where_token,
            "#[durable] fns cannot have a `where` clause: the input and output must be concrete \
             types",
        ));
    }
    refused
}

/// Splits the parameters into the context and the input, reporting a
/// receiver, a missing context, a wrong count or a wrong order.
fn params(sig: &Signature, errors: &mut Errors) -> (Option<Param>, Option<Param>) {
    if let Some(FnArg::Receiver(receiver)) = sig.inputs.first() {
        errors.push(syn::Error::new_spanned(
            receiver,
            "#[durable] cannot be used on a method: a workflow is a free \
             `async fn(ctx: &Ctx, input: T)`; move it out of the `impl` block",
        ));
        return (None, None);
    }
    let typed: Vec<&PatType> = sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(typed) => Some(typed),
            FnArg::Receiver(_) => None,
        })
        .collect();
    match typed.as_slice() {
        [] => {
            errors.push(syn::Error::new(
                sig.paren_token.span.join(),
                "a #[durable] fn takes the context and one input: \
                 `(ctx: &Ctx, input: T)`; found no parameters",
            ));
            (None, None)
        }
        [only] => {
            let message = if is_ctx(&only.ty) {
                "a #[durable] fn takes one input after the context: add a second parameter, \
                 e.g. `(ctx: &Ctx, input: T)`, or `_: ()` if the workflow needs no input"
            } else {
                "the first parameter of a #[durable] fn must be the context: \
                 `(ctx: &Ctx, input: T)`; add `ctx: &Ctx` before this one"
            };
            errors.push(syn::Error::new(sig.paren_token.span.join(), message));
            (None, None)
        }
        [first, second, rest @ ..] => {
            let mut ok = true;
            if !is_ctx(&first.ty) {
                ok = false;
                let message = if is_ctx(&second.ty) {
                    "the context comes first: swap the parameters to `(ctx: &Ctx, input: T)`"
                } else if is_ctx_mut(&first.ty) {
                    "the context is a shared reference: write `&Ctx`, not `&mut Ctx`"
                } else {
                    "the first parameter of a #[durable] fn must be the context, `&Ctx`: \
                     a workflow is `async fn(ctx: &Ctx, input: T)`"
                };
                errors.push(syn::Error::new_spanned(&first.ty, message));
            }
            if !rest.is_empty() {
                ok = false;
                let extra: TokenStream = rest.iter().map(ToTokens::to_token_stream).collect();
                errors.push(syn::Error::new_spanned(
                    extra,
                    "a #[durable] fn takes exactly one input after the context; bundle the \
                     values in a struct or a tuple, e.g. `(ctx: &Ctx, (a, b): (A, B))`",
                ));
            }
            if ok {
                (Some(param(first)), Some(param(second)))
            } else {
                (None, None)
            }
        }
    }
}

/// Our copy of one parameter.
fn param(typed: &PatType) -> Param {
    Param {
        attrs: typed.attrs.clone(),
        pat: (*typed.pat).clone(),
        ty: (*typed.ty).clone(),
    }
}

/// Whether `ty` is `&Ctx` (any path ending in `Ctx`, e.g. `&durable::Ctx`).
fn is_ctx(ty: &Type) -> bool {
    matches!(unwrap(ty), Type::Reference(reference)
        if reference.mutability.is_none() && names_ctx(&reference.elem))
}

/// Whether `ty` is `&mut Ctx`.
fn is_ctx_mut(ty: &Type) -> bool {
    matches!(unwrap(ty), Type::Reference(reference)
        if reference.mutability.is_some() && names_ctx(&reference.elem))
}

/// Whether `ty` is a path to `Ctx`.
fn names_ctx(ty: &Type) -> bool {
    match unwrap(ty) {
        Type::Path(path) => {
            path.qself.is_none()
                && path
                    .path
                    .segments
                    .last()
                    .is_some_and(|last| last.ident == "Ctx" && last.arguments.is_none())
        }
        _ => false,
    }
}

/// `ty` without redundant parentheses or invisible groups.
fn unwrap(ty: &Type) -> &Type {
    match ty {
        Type::Paren(inner) => unwrap(&inner.elem),
        Type::Group(inner) => unwrap(&inner.elem),
        _ => ty,
    }
}

/// Checks that the input or output type (`role`) is owned and concrete:
/// it is stored, and read back on resume. Returns whether it is.
fn owned(ty: &Type, role: &str, errors: &mut Errors) -> bool {
    let mut finder = Borrowed::default();
    finder.visit_type(ty);
    let Some((tokens, problem)) = finder.found else {
        return true;
    };
    let message = match problem {
        Problem::Reference(owned) => format!(
            "the workflow {role} must be an owned type: it is stored, and read back when the \
             instance resumes; use {owned} instead of a reference"
        ),
        Problem::Lifetime => format!(
            "the workflow {role} must be an owned type: it is stored, and read back when the \
             instance resumes; it cannot borrow (only `'static` lifetimes are allowed)"
        ),
        Problem::ImplTrait => format!(
            "the workflow {role} must be a concrete type, not `impl Trait`: it is stored, and \
             read back when the instance resumes"
        ),
    };
    errors.push(syn::Error::new_spanned(tokens, message));
    false
}

/// What makes a type unusable as a workflow's input or output.
enum Problem {
    /// A reference; holds the suggested owned type, as text for the message.
    Reference(String),
    /// A lifetime other than `'static`.
    Lifetime,
    /// `impl Trait`.
    ImplTrait,
}

/// Finds the first borrowed or opaque part of a type.
#[derive(Default)]
struct Borrowed {
    /// The offending tokens and what is wrong with them.
    found: Option<(TokenStream, Problem)>,
}

impl<'ast> Visit<'ast> for Borrowed {
    fn visit_type(&mut self, ty: &'ast Type) {
        if self.found.is_some() {
            return;
        }
        match ty {
            Type::Reference(reference) => {
                let elem = &reference.elem;
                let suggestion = match elem.to_token_stream().to_string().as_str() {
                    "str" => "`String`".to_string(),
                    "[u8]" => "`Vec<u8>`".to_string(),
                    text => format!("`{text}`"),
                };
                self.found = Some((ty.to_token_stream(), Problem::Reference(suggestion)));
            }
            Type::ImplTrait(_) => self.found = Some((ty.to_token_stream(), Problem::ImplTrait)),
            _ => syn::visit::visit_type(self, ty),
        }
    }

    fn visit_lifetime(&mut self, lifetime: &'ast syn::Lifetime) {
        if self.found.is_none() && lifetime.ident != "static" {
            self.found = Some((lifetime.to_token_stream(), Problem::Lifetime));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn read(item: TokenStream) -> (Workflow, Vec<String>) {
        let mut errors = Errors::default();
        let workflow = Workflow::parse(item, &mut errors).unwrap();
        (workflow, errors.messages())
    }

    #[test]
    fn reads_a_good_workflow() {
        let (workflow, errors) = read(quote! {
            /// Docs.
            pub async fn provision(_ctx: &durable::Ctx, mut signup: Signup) -> Result<u32, String> { Ok(1) }
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert!(workflow.is_complete());
        assert_eq!(workflow.ident, "provision");
        assert_eq!(workflow.attrs.len(), 1);
        let pat = workflow.input.unwrap().pat;
        assert_eq!(quote!(#pat).to_string(), quote!(mut signup).to_string());
        assert_eq!(workflow.block.to_string(), quote!({ Ok(1) }).to_string());
    }

    #[test]
    fn no_return_type_is_unit() {
        let (workflow, errors) = read(quote!(
            async fn f(ctx: &Ctx, _: ()) {}
        ));
        assert!(errors.is_empty());
        let output = workflow.output.unwrap();
        assert_eq!(quote!(#output).to_string(), "()");
    }

    #[test]
    fn reports_every_signature_problem() {
        let cases: &[(TokenStream, &str)] = &[
            (
                quote!(
                    fn f(ctx: &Ctx, x: u32) {}
                ),
                "#[durable] requires an `async fn`",
            ),
            (
                quote!(
                    async unsafe fn f(ctx: &Ctx, x: u32) {}
                ),
                "a #[durable] fn cannot be `unsafe`",
            ),
            (
                quote!(
                    async fn f() {}
                ),
                "a #[durable] fn takes the context and one input",
            ),
            (
                quote!(
                    async fn f(ctx: &Ctx) {}
                ),
                "a #[durable] fn takes one input after the context",
            ),
            (
                quote!(
                    async fn f(x: u32) {}
                ),
                "the first parameter of a #[durable] fn must be the context: ",
            ),
            (
                quote!(
                    async fn f(x: u32, ctx: &Ctx) {}
                ),
                "the context comes first",
            ),
            (
                quote!(
                    async fn f(ctx: &mut Ctx, x: u32) {}
                ),
                "the context is a shared reference",
            ),
            (
                quote!(
                    async fn f(ctx: Ctx, x: u32) {}
                ),
                "the first parameter of a #[durable] fn must be the context, `&Ctx`",
            ),
            (
                quote!(
                    async fn f(ctx: &Ctx, x: u32, y: u32) {}
                ),
                "a #[durable] fn takes exactly one input",
            ),
            (
                quote!(
                    async fn f(&self, x: u32) {}
                ),
                "#[durable] cannot be used on a method",
            ),
            (
                quote!(
                    async fn f<T>(ctx: &Ctx, x: T) {}
                ),
                "#[durable] fns cannot be generic",
            ),
            (
                quote!(
                    async fn f<'a>(ctx: &'a Ctx, x: u32) {}
                ),
                "#[durable] fns cannot have lifetime parameters",
            ),
            (
                quote!(
                    async fn f(ctx: &Ctx, x: &str) {}
                ),
                "the workflow input must be an owned type: it is stored, and read back when the instance resumes; use `String`",
            ),
            (
                quote!(
                    async fn f(ctx: &Ctx, x: Vec<&'static str>) {}
                ),
                "the workflow input must be an owned type",
            ),
            (
                quote!(
                    async fn f(ctx: &Ctx, x: u32) -> impl Sized {}
                ),
                "the workflow output must be a concrete type",
            ),
        ];
        for (item, expected) in cases {
            let (workflow, errors) = read(item.clone());
            assert_eq!(errors.len(), 1, "{item}: {errors:?}");
            assert!(errors[0].starts_with(expected), "{item}: {errors:?}");
            let soft =
                errors[0].starts_with("#[durable] requires") || errors[0].contains("`unsafe`");
            assert_eq!(workflow.is_complete(), soft, "{item}");
        }
    }

    #[test]
    fn only_a_fn_is_fatal() {
        let mut errors = Errors::default();
        let error = Workflow::parse(
            quote!(
                struct S;
            ),
            &mut errors,
        )
        .err()
        .unwrap();
        assert!(
            error
                .to_string()
                .starts_with("#[durable] can only be applied to an `async fn")
        );
        let error = Workflow::parse(
            quote!(
                async fn f(ctx: &Ctx, x: u32);
            ),
            &mut errors,
        )
        .err()
        .unwrap();
        assert_eq!(error.to_string(), "a #[durable] fn needs a body: `{ ... }`");
        // A syntax error in the body is left to the compiler.
        let workflow = Workflow::parse(
            quote!(async fn f(ctx: &Ctx, x: u32) { let = ; }),
            &mut errors,
        );
        assert!(workflow.is_ok());
        assert!(errors.messages().is_empty());
    }

    #[test]
    fn static_lifetimes_are_owned_enough() {
        let (workflow, errors) = read(quote!(
            async fn f(ctx: &Ctx, x: Cow<'static, str>) {}
        ));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(workflow.is_complete());
    }
}
