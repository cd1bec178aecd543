//! Code generation: the workflow value (the fn, now returning the workflow
//! definition), the definition's `Workflow` impl, and the rewrite of each
//! `step!`, `sleep!`, `sleep_until!` and `wait_for!` site in the body.
//!
//! Generated code reaches the runtime only through `::durable::__private`
//! (or the `crate = "..."` path) and std only through `::core` / `::std`, and
//! every binding it introduces is a `__durable_*` ident with
//! `Span::mixed_site()`, which user code can neither see nor clash with.

use proc_macro2::{Delimiter, Group, Ident, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::{Attribute, LitStr, Path};

use crate::args::{self, Args};
use crate::ast::Workflow;
use crate::sites::{Body, KindArgs, Node, Position, Site, SiteKind};
use crate::validate::{self, Errors};

/// `#[durable]`: parse, validate, generate. On any error the item is still
/// handed back (the workflow value with a body that compiles) together with
/// every error, so the user sees those errors and not a cascade.
pub(crate) fn durable(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = Args::parse(args, &mut errors);
    let workflow = match Workflow::parse(item.clone(), &mut errors) {
        Ok(workflow) => workflow,
        Err(error) => {
            errors.push(error);
            return with_errors(item, errors);
        }
    };
    let body = Body::scan(workflow.block.clone(), &mut errors);
    validate::check(&args, &workflow, &body, &mut errors);

    let cx = Cx::new(&args);
    let expanded = if workflow.is_complete() && body.is_expandable() {
        generate(&cx, &args, &workflow, &body)
    } else {
        fallback(&cx, &args, &workflow, &body)
    };
    with_errors(expanded, errors)
}

/// What every generator needs: where the runtime is and the hidden idents.
struct Cx {
    /// The path of the `durable` crate: `::durable` or `crate = "..."`.
    krate: Path,
    /// `__durable_ctx`, the `&Ctx` that `run` receives and every site
    /// (steps, sleeps, waits) uses.
    ctx: Ident,
    /// `__durable_input`, the input that `run` receives.
    input: Ident,
    /// `__durable_ret`, the body's value, bound to the output type.
    ret: Ident,
}

impl Cx {
    /// The context for one expansion.
    fn new(args: &Args) -> Cx {
        let hidden = |name: &str| Ident::new(name, Span::mixed_site());
        Cx {
            krate: args.krate.clone().unwrap_or_else(args::default_crate),
            ctx: hidden("__durable_ctx"),
            input: hidden("__durable_input"),
            ret: hidden("__durable_ret"),
        }
    }

    /// `<krate>::__private::<item>`, every token spanned at `span`, so that
    /// a diagnostic about the path points where the caller wants.
    fn private(&self, item: &str, span: Span) -> TokenStream {
        let krate = respan(self.krate.to_token_stream(), span);
        let item = Ident::new(item, span);
        quote_spanned!(span=> #krate::__private::#item)
    }
}

/// Appends the errors, if any, to the generated tokens.
fn with_errors(mut tokens: TokenStream, errors: Errors) -> TokenStream {
    if let Some(error) = errors.into_error() {
        tokens.extend(error.to_compile_error());
    }
    tokens
}

/// The full expansion.
fn generate(cx: &Cx, args: &Args, workflow: &Workflow, body: &Body) -> TokenStream {
    // Input:  /// Docs.
    //         pub async fn provision(ctx: &Ctx, signup: Signup) -> R { BODY }
    // Output: pub struct __durable_provision;
    //         impl Workflow for __durable_provision { .. fn run(..) { BODY, steps rewritten } }
    //         /// Docs.
    //         pub fn provision(_: WorkflowMarker) -> __durable_provision { __durable_provision }
    let (trait_items, mut parts) = run(cx, workflow, body);
    if args.allow.is_none() {
        let input = workflow.input.as_ref().map(|input| {
            let (pat, ty) = (&input.pat, &input.ty);
            quote!(#pat: #ty)
        });
        let findings = crate::lint::scan(body, input.as_ref());
        if !findings.is_empty() {
            // The warnings go beside the fn that holds the body.
            let warnings = crate::lint::warnings(&findings);
            parts = quote! {
                #parts
                #[allow(dead_code, clippy::let_unit_value)]
                fn __durable_determinism() { #warnings }
            };
        }
    }
    workflow_fn(cx, args, workflow, body, (trait_items, parts))
}

/// The expansion when the fn could not be expanded as a whole (a bad
/// signature, a malformed or nested step): the same fn and impl, with the
/// body left out so that the errors already reported are the only ones.
fn fallback(cx: &Cx, args: &Args, workflow: &Workflow, body: &Body) -> TokenStream {
    // Input:  #[durable] async fn provision(ctx: &Ctx) { step!("a") }
    // Output: struct __durable_provision;
    //         impl Workflow for __durable_provision { type Input = (); .. fn run(..) { unimplemented!() } }
    //         fn provision(_: WorkflowMarker) -> __durable_provision { __durable_provision }
    if workflow.is_method {
        // A method must stay a method: keep it, bodiless.
        let (attrs, vis, sig) = (&workflow.attrs, &workflow.vis, &workflow.sig);
        return quote! {
            #(#attrs)*
            #[allow(unused_variables)]
            #vis #sig {
                ::core::unimplemented!("this #[durable] fn did not compile")
            }
        };
    }
    let ctx_type = cx.private("Ctx", Span::call_site());
    let box_future = cx.private("BoxFuture", Span::call_site());
    let self_ = syn::token::SelfValue(Span::mixed_site());
    let run = quote! {
        fn run<'a>(#self_, _: &'a #ctx_type, _: Self::Input) -> #box_future<'a, Self::Output> {
            ::core::unimplemented!("this #[durable] fn did not compile")
        }
    };
    workflow_fn(cx, args, workflow, body, (run, TokenStream::new()))
}

/// The workflow value: the fn, with its name, visibility and attributes,
/// now taking a marker that only the engine can build and returning the
/// workflow definition, a hidden unit struct that implements `Workflow`.
///
/// The value is a fn, not a unit struct named like it, because such a
/// struct would take over every `let provision = ..` and every parameter of
/// that name in the module. The definition is declared next to the fn (not
/// inside it) so that the user's types are written once, in its impl, and a
/// typo in one is reported once.
fn workflow_fn(
    cx: &Cx,
    args: &Args,
    workflow: &Workflow,
    body: &Body,
    (run, parts): (TokenStream, TokenStream),
) -> TokenStream {
    // Input:  #[durable(name = "user-provisioning")]
    //         pub async fn provision(ctx: &Ctx, signup: Signup) -> R {
    //             step!("a", ..); sleep!("b", ..); wait_for!("c"); ..
    //         }
    // Output: #[doc(hidden)]
    //         #[derive(Clone, Copy)]
    //         pub struct __durable_provision;
    //         impl ::durable::__private::Workflow for __durable_provision {
    //             type Input = Signup;
    //             type Output = R;
    //             const NAME: &'static str = "user-provisioning";
    //             const SITES: &'static [SiteDecl] = &[SiteDecl { name: "a", kind: SiteKind::Step, guard: None }, ..];
    //             fn run<'a>(..) -> BoxFuture<'a, R> { .. }
    //         }
    //         pub fn provision(_: ::durable::__private::WorkflowMarker) -> __durable_provision {
    //             __durable_provision
    //         }
    let (vis, ident) = (&workflow.vis, &workflow.ident);
    let is =
        |attr: &&Attribute, names: &[&str]| names.iter().any(|name| attr.path().is_ident(name));
    let cfgs: Vec<_> = workflow.attrs.iter().filter(|attr| is(attr, CFG)).collect();
    // The lint levels go where the user's body is: the inherent impl that
    // holds it when there is one (`expect` there only, or the other impl's
    // copy would be unfulfilled), else the trait impl.
    let body_attrs: Vec<_> = workflow
        .attrs
        .iter()
        .filter(|attr| is(attr, CFG) || is(attr, LINTS))
        .collect();
    let impl_attrs: Vec<_> = if parts.is_empty() {
        body_attrs.clone()
    } else {
        body_attrs
            .iter()
            .copied()
            .filter(|attr| !is(attr, &["expect"]))
            .collect()
    };
    let fn_attrs = workflow.attrs.iter().filter(|attr| !is(attr, &["expect"]));
    let unraw = ident.unraw().to_string();
    let definition = definition_ident(workflow);
    let parts = if parts.is_empty() {
        parts
    } else {
        quote! {
            #(#body_attrs)*
            impl #definition {
                #parts
            }
        }
    };
    let doc = format!("The workflow definition behind `{unraw}`, generated by `#[durable]`.");
    let marker = cx.private("WorkflowMarker", Span::call_site());
    let trait_path = cx.private("Workflow", Span::call_site());
    let unit: syn::Type = syn::parse_quote!(());
    let input = workflow.input.as_ref().map_or(&unit, |input| &input.ty);
    let output = workflow.output.as_ref().unwrap_or(&unit);
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| LitStr::new(&unraw, ident.span()));
    // Every name of every kind, in source order, with its kind.
    let decl = cx.private("SiteDecl", Span::call_site());
    let kind_path = cx.private("SiteKind", Span::call_site());
    let guards = patch_guards(body);
    let sites = body.declared().into_iter().map(|(name, kind)| {
        let kind = Ident::new(
            match kind {
                SiteKind::Step => "Step",
                SiteKind::Sleep | SiteKind::SleepUntil => "Sleep",
                SiteKind::WaitFor => "Wait",
                SiteKind::Patched => "Patch",
            },
            Span::call_site(),
        );
        let guard = match guards.iter().find(|(site, _)| *site == name.value()) {
            Some((_, patch)) => quote!(::core::option::Option::Some(#patch)),
            None => quote!(::core::option::Option::None),
        };
        quote!(#decl { name: #name, kind: #kind_path::#kind, guard: #guard, })
    });
    let retry_policy = retry_policy(cx, args);
    let version = args
        .version
        .as_ref()
        .map(|v| quote!(const VERSION: u32 = #v;));
    let timeout = args
        .timeout_ms
        .map(|ms| quote!(const TIMEOUT_MS: ::core::option::Option<u64> = ::core::option::Option::Some(#ms);));
    // A step with `compensate = ..` lets a cancel compensate first.
    let compensates = body
        .sites
        .iter()
        .any(|site| {
            matches!(
                site.args.as_ref().map(|args| &args.kind),
                Some(KindArgs::Step {
                    compensate: Some(_),
                    ..
                })
            )
        })
        .then(|| {
            quote!(
                const COMPENSATES: bool = true;
            )
        });
    quote! {
        #(#cfgs)*
        #[doc = #doc]
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #[derive(::core::clone::Clone, ::core::marker::Copy)]
        #vis struct #definition;

        #(#impl_attrs)*
        impl #trait_path for #definition {
            type Input = #input;
            type Output = #output;
            const NAME: &'static str = #name;
            #version
            #timeout
            #compensates
            const SITES: &'static [#decl] = &[#(#sites),*];
            #retry_policy
            #run
        }

        #parts

        #(#fn_attrs)*
        #vis fn #ident(_: #marker) -> #definition {
            #definition
        }
    }
}

/// The attributes that also go on the definition and its impl: a `cfg`
/// must remove them with the fn.
const CFG: &[&str] = &["cfg", "cfg_attr"];

/// The lint levels, which also go on the impl, where the user's body is.
/// `expect` goes there only: on both, one of the two would be unfulfilled.
const LINTS: &[&str] = &["allow", "warn", "deny", "forbid", "expect"];

/// `retry_policy()`, only when the attribute has `retry = ...`.
fn retry_policy(cx: &Cx, args: &Args) -> TokenStream {
    // Input:  #[durable(retry = RetryPolicy::no_retry())]
    // Output: fn retry_policy(&self) -> Option<RetryPolicy> { Some(RetryPolicy::no_retry()) }
    let Some(retry) = &args.retry else {
        return TokenStream::new();
    };
    let policy = cx.private("RetryPolicy", Span::call_site());
    quote! {
        fn retry_policy(&self) -> ::core::option::Option<#policy> {
            ::core::option::Option::Some(#retry)
        }
    }
}

/// `run`: the user's parameters re-bound from the hidden ones, then the
/// user's block, every site rewritten, bound to the output type so that a
/// wrong value is reported at the user's expression and `?` knows what it
/// converts to.
///
/// Inner attributes of the block (`#![allow(..)]`) move onto that binding,
/// the only place they still apply to the whole body. The `return` after a
/// body that always returns early is unreachable, which is ours to allow.
/// The parameters' re-binding allows clippy's `no_effect_underscore_binding`,
/// as an `async fn`'s own desugaring is exempt from it (`_ctx: &Ctx` is how a
/// workflow says its body does not use the context).
fn run(cx: &Cx, workflow: &Workflow, body: &Body) -> (TokenStream, TokenStream) {
    // Input:  async fn provision(ctx: &Ctx, signup: Signup) -> R { #![attr] BODY }
    // Output (trait items):
    //         fn run<'a>(self, __durable_ctx: &'a Ctx, __durable_input: Self::Input)
    //             -> BoxFuture<'a, Self::Output> {
    //             (Self::__durable_parts().0)(__durable_ctx, __durable_input)
    //         }
    //         fn site_types(&self) -> Vec<Option<SiteTypes>> { .. each of parts().1 called .. }
    // Output (inherent items):
    //         fn __durable_parts() -> (impl for<'a> Fn(&'a Ctx, Input) -> BoxFuture<'a, R> + Copy,
    //                                  [fn() -> Option<SiteTypes>; N]) {
    //             let __durable_site_0 = PhantomData; ..
    //             let body = body_fn(move |__durable_ctx, __durable_input| Box::pin(async move {
    //                 let ctx: &Ctx = __durable_ctx;
    //                 let signup: Signup = __durable_input;
    //                 #[attr]
    //                 let __durable_ret: R = { BODY };
    //                 return __durable_ret;
    //             }));
    //             (body, [step_site_types(__durable_site_0), sleep_site_types(), ..])
    //         }
    // Each step and wait site passes its phantom (`PhantomData<fn() -> (T, E)>`)
    // to its runtime call, so the phantom's type is inferred from the body:
    // the manifest learns every site's types without running anything.
    let (Some(ctx), Some(input), Some(output)) = (&workflow.ctx, &workflow.input, &workflow.output)
    else {
        unreachable!("`generate` runs only on a complete signature");
    };
    let Cx {
        ctx: ctx_ident,
        input: input_ident,
        ret,
        ..
    } = cx;
    let ctx_type = cx.private("Ctx", Span::call_site());
    let box_future = cx.private("BoxFuture", Span::call_site());
    let site_types = cx.private("SiteTypes", Span::call_site());
    let trait_path = cx.private("Workflow", Span::call_site());
    let self_ = syn::token::SelfValue(Span::mixed_site());
    let (ctx_attrs, ctx_pat, ctx_ty) = (&ctx.attrs, &ctx.pat, &ctx.ty);
    let (input_attrs, input_pat, input_ty) = (&input.attrs, &input.pat, &input.ty);
    let (inner_attrs, nodes) = split_inner_attrs(&body.nodes);
    let block = rewrite_group(cx, body, &body.group, nodes);
    let declared = body.declared();
    let count = declared.len();
    let phantoms: Vec<Ident> = (0..count).map(site_phantom).collect();
    let types = declared.iter().enumerate().map(|(i, (_, kind))| {
        let phantom = &phantoms[i];
        match kind {
            SiteKind::Step => {
                let f = cx.private("step_probe", Span::call_site());
                let t = cx.private("TypesOfStep", Span::call_site());
                let u = cx.private("TypesUnknown", Span::call_site());
                quote!({
                    #[allow(unused_imports)]
                    use #t as _;
                    #[allow(unused_imports)]
                    use #u as _;
                    (&#f(#phantom)).site_types()
                })
            }
            SiteKind::WaitFor => {
                let f = cx.private("wait_probe", Span::call_site());
                let t = cx.private("TypesOfWait", Span::call_site());
                let u = cx.private("TypesUnknown", Span::call_site());
                quote!({
                    #[allow(unused_imports)]
                    use #t as _;
                    #[allow(unused_imports)]
                    use #u as _;
                    (&#f(#phantom)).site_types()
                })
            }
            SiteKind::Sleep | SiteKind::SleepUntil | SiteKind::Patched => {
                let f = cx.private("sleep_site_types", Span::call_site());
                quote!(#f())
            }
        }
    });
    let phantom_lets = declared.iter().enumerate().filter_map(|(i, (_, kind))| {
        let phantom = &phantoms[i];
        matches!(kind, SiteKind::Step | SiteKind::WaitFor)
            .then(|| quote!(let #phantom = ::core::marker::PhantomData;))
    });
    let body_fn = cx.private("body_fn", Span::call_site());
    let parts = Ident::new("__durable_parts", Span::mixed_site());
    let body_ident = Ident::new("__durable_body", Span::mixed_site());
    let trait_items = quote! {
        fn run<'a>(#self_, #ctx_ident: &'a #ctx_type, #input_ident: Self::Input)
            -> #box_future<'a, Self::Output>
        {
            (Self::#parts().0)(#ctx_ident, #input_ident)
        }

        fn site_types(&#self_) -> ::std::vec::Vec<::core::option::Option<#site_types>> {
            Self::#parts().1.iter().map(|f| f()).collect()
        }
    };
    let inherent = quote! {
        #[allow(clippy::type_complexity)]
        fn #parts() -> (
            impl for<'a> ::core::ops::Fn(
                &'a #ctx_type,
                <Self as #trait_path>::Input,
            ) -> #box_future<'a, <Self as #trait_path>::Output> + ::core::marker::Copy,
            [fn() -> ::core::option::Option<#site_types>; #count],
        ) {
            #(#phantom_lets)*
            let #body_ident = #body_fn::<<Self as #trait_path>::Input, <Self as #trait_path>::Output, _>(
                move |#ctx_ident, #input_ident| {
                    ::std::boxed::Box::pin(async move {
                        #(#ctx_attrs)*
                        #[allow(clippy::no_effect_underscore_binding)]
                        let #ctx_pat: #ctx_ty = #ctx_ident;
                        #(#input_attrs)*
                        #[allow(clippy::no_effect_underscore_binding)]
                        let #input_pat: #input_ty = #input_ident;
                        #(#inner_attrs)*
                        let #ret: #output = #block;
                        #[allow(unreachable_code)]
                        return #ret;
                    })
                },
            );
            (#body_ident, [#(#types),*])
        }
    };
    (trait_items, inherent)
}

/// For each site written inside `if patched!("x") { .. }`: (its name, "x").
/// An instance started before the patch existed skips those sites, so a
/// deploy may add them before sites such instances already passed.
fn patch_guards(body: &Body) -> Vec<(String, String)> {
    fn names_in(body: &Body, nodes: &[Node], out: &mut Vec<String>) {
        for node in nodes {
            match node {
                Node::Site(i) => {
                    if let Some(name) = body.sites[*i].name() {
                        out.push(name.value());
                    }
                }
                Node::Group { nodes, .. } => names_in(body, nodes, out),
                Node::Tree(_) => {}
            }
        }
    }
    fn walk(body: &Body, nodes: &[Node], out: &mut Vec<(String, String)>) {
        for (i, node) in nodes.iter().enumerate() {
            if let (
                Node::Tree(TokenTree::Ident(if_)),
                Some(Node::Site(patch)),
                Some(Node::Group {
                    group,
                    nodes: inner,
                }),
            ) = (node, nodes.get(i + 1), nodes.get(i + 2))
                && if_ == "if"
                && body.sites[*patch].kind == SiteKind::Patched
                && group.delimiter() == Delimiter::Brace
                && let Some(patch) = body.sites[*patch].name()
            {
                let mut guarded = Vec::new();
                names_in(body, inner, &mut guarded);
                out.extend(guarded.into_iter().map(|n| (n, patch.value())));
            }
            if let Node::Group { nodes, .. } = node {
                walk(body, nodes, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(body, &body.nodes, &mut out);
    out
}

/// The hidden phantom of the `i`-th declared site.
fn site_phantom(i: usize) -> Ident {
    Ident::new(&format!("__durable_site_{i}"), Span::mixed_site())
}

/// The phantom of the `i`-th declared site as a call passes it: located
/// at the user's tokens, so that an unmet bound on the site's types (not
/// `Serialize`, not inferable) is reported there, not at `#[durable]`.
fn site_phantom_at(i: usize, at: Span) -> Ident {
    Ident::new(
        &format!("__durable_site_{i}"),
        Span::mixed_site().located_at(at),
    )
}

/// The hidden ident of the workflow definition behind `workflow`.
fn definition_ident(workflow: &Workflow) -> Ident {
    let unraw = workflow.ident.unraw().to_string();
    Ident::new(&format!("__durable_{unraw}"), Span::mixed_site())
}

/// Splits the body's leading inner attributes (`#![..]`) off, as outer
/// attributes (`#[..]`).
fn split_inner_attrs(nodes: &[Node]) -> (Vec<TokenStream>, &[Node]) {
    let mut attrs = Vec::new();
    let mut rest = nodes;
    while let [
        Node::Tree(TokenTree::Punct(pound)),
        Node::Tree(TokenTree::Punct(bang)),
        Node::Tree(TokenTree::Group(group)),
        tail @ ..,
    ] = rest
    {
        if pound.as_char() != '#'
            || bang.as_char() != '!'
            || group.delimiter() != Delimiter::Bracket
        {
            break;
        }
        attrs.push(quote!(#pound #group));
        rest = tail;
    }
    (attrs, rest)
}

/// A group of the body, written back with its sites rewritten; its
/// delimiter and span are the original's.
fn rewrite_group(cx: &Cx, body: &Body, group: &Group, nodes: &[Node]) -> TokenTree {
    let mut stream = TokenStream::new();
    for node in nodes {
        match node {
            Node::Tree(tree) => stream.extend([tree.clone()]),
            Node::Group { group, nodes } => stream.extend([rewrite_group(cx, body, group, nodes)]),
            Node::Site(index) => stream.extend(site(cx, body, &body.sites[*index])),
        }
    }
    let mut rewritten = Group::new(group.delimiter(), stream);
    rewritten.set_span(group.span());
    TokenTree::Group(rewritten)
}

/// One site, rewritten to the runtime call. The user's macro name (`step`,
/// `sleep`...) stays, so the call goes through their import of the
/// facade's macro, whose `@__durable_expanded` arm hands the call back
/// unchanged.
fn site(cx: &Cx, body: &Body, site: &Site) -> TokenStream {
    // Input:  step!("charge-card", retry = EXPR, BODY)
    // Output: step!(@__durable_expanded (
    //             ::durable::__private::step(__durable_ctx, "charge-card",
    //                 Some(EXPR), || async { BODY }).await
    //         ))
    // Input:  sleep!("cool-off", DURATION)
    // Output: sleep!(@__durable_expanded (
    //             ::durable::__private::sleep(__durable_ctx, "cool-off", DURATION).await
    //         ))
    let Some(args) = &site.args else {
        unreachable!("`generate` runs only when every site parsed");
    };
    let name = &args.name;
    let index = body
        .declared()
        .iter()
        .position(|(n, _)| n.value() == name.value())
        .unwrap_or(0);
    let call = match &args.kind {
        KindArgs::Step {
            retry,
            key,
            timeout,
            body: step_body,
            compensate,
        } => step_call(
            cx,
            &site_phantom_at(index, first_and_last_span(step_body).0),
            name,
            (key.as_ref(), retry.as_ref(), timeout.as_ref()),
            (step_body, compensate.as_ref()),
            site.position,
        ),
        KindArgs::Sleep { duration } => timer_call(cx, "sleep", name, duration, site.position),
        KindArgs::Patched => {
            let span = Span::mixed_site().located_at(name.span());
            let path = cx.private("patched", name.span());
            let ctx = &cx.ctx;
            quote_spanned!(span=> #path(#ctx, #name))
        }
        KindArgs::SleepUntil { until } => timer_call(cx, "sleep_until", name, until, site.position),
        KindArgs::WaitFor { timeout } => wait_call(
            cx,
            &site_phantom_at(index, name.span()),
            name,
            timeout.as_ref(),
            site.position,
        ),
    };
    let marker = Ident::new("__durable_expanded", Span::mixed_site());
    let mut group = Group::new(site.group.delimiter(), quote!(@#marker (#call)));
    group.set_span(site.group.span());
    let (ident, bang) = (&site.ident, &site.bang);
    quote!(#ident #bang #group)
}

/// The call behind one `step!`, spanned at its body so that a type error
/// about the step's value or error (not `Serialize`, not `Send`) points at
/// the body rather than at `#[durable]`. Awaited, unless the site is in a
/// position that wants the future (`join!`, `select!`).
fn step_call(
    cx: &Cx,
    phantom: &Ident,
    name: &LitStr,
    (key, retry, timeout): (
        Option<&TokenStream>,
        Option<&TokenStream>,
        Option<&TokenStream>,
    ),
    (body, compensate): (&TokenStream, Option<&TokenStream>),
    position: Position,
) -> TokenStream {
    // Input:  "charge-card", Some(key = KEY), Some(retry = EXPR), Some(timeout = D), BODY,
    //         Position::Value
    // Output: ::durable::__private::step_site(__durable_ctx, __durable_site_0, "charge-card",
    //             Some(&KEY), Some(EXPR), Some(D), || async { BODY }).await
    // (`None::<&()>` without a key.) With `compensate = C`:
    // ::durable::__private::step_site_compensated(.., || async { BODY }, C).await
    let (first, last) = first_and_last_span(body);
    let span = Span::mixed_site().located_at(first);
    let end = Span::mixed_site().located_at(last);
    // The closure and its async block span the whole body.
    let mut block = Group::new(Delimiter::Brace, body.clone());
    block.set_span(end);
    let policy = match retry {
        Some(retry) => quote_spanned!(span=> ::core::option::Option::Some(#retry)),
        None => quote_spanned!(span=> ::core::option::Option::None),
    };
    let key = match key {
        Some(key) => quote_spanned!(span=> ::core::option::Option::Some(&(#key))),
        None => quote_spanned!(span=> ::core::option::Option::None::<&()>),
    };
    let timeout = match timeout {
        Some(timeout) => {
            // Spanned at the expression: a value that is not a `Duration`
            // is reported there.
            let at = Span::mixed_site().located_at(first_and_last_span(timeout).0);
            quote_spanned!(at=> ::core::option::Option::Some::<::core::time::Duration>(#timeout))
        }
        None => quote_spanned!(span=> ::core::option::Option::None),
    };
    let args = quote_spanned!(span=> #phantom, #name, #key, #policy, #timeout, || async #block);
    match compensate {
        None => runtime_call(cx, "step_site", args, (first, last), position),
        Some(compensate) => {
            // Spanned at the closure: one that does not fit (not `'static`,
            // no future) is reported there.
            let at = Span::mixed_site().located_at(first_and_last_span(compensate).0);
            let args = quote_spanned!(at=> #args, #compensate);
            runtime_call(cx, "step_site_compensated", args, (first, last), position)
        }
    }
}

/// The call behind one `sleep!` (`function` is `sleep`) or `sleep_until!`
/// (`sleep_until`), spanned at its duration or deadline expression.
fn timer_call(
    cx: &Cx,
    function: &str,
    name: &LitStr,
    operand: &TokenStream,
    position: Position,
) -> TokenStream {
    // Input:  "cool-off", DURATION, Position::Value
    // Output: ::durable::__private::sleep(__durable_ctx, "cool-off", DURATION).await
    let (first, last) = first_and_last_span(operand);
    let span = Span::mixed_site().located_at(first);
    let args = quote_spanned!(span=> #name, #operand);
    runtime_call(cx, function, args, (first, last), position)
}

/// The call behind one `wait_for!`: `wait_for`, or `wait_for_timeout` with
/// `timeout = ..`. Spanned from the name to the timeout, so that an
/// unusable payload type (not `Deserialize`, not inferable) is reported at
/// the wait.
fn wait_call(
    cx: &Cx,
    phantom: &Ident,
    name: &LitStr,
    timeout: Option<&TokenStream>,
    position: Position,
) -> TokenStream {
    // Input:  "manager-approval", Some(TIMEOUT), Position::Value
    // Output: ::durable::__private::wait_for_timeout(__durable_ctx, "manager-approval", TIMEOUT).await
    // Input:  "manager-approval", None, Position::Value
    // Output: ::durable::__private::wait_for(__durable_ctx, "manager-approval").await
    let first = name.span();
    match timeout {
        Some(timeout) => {
            let (_, last) = first_and_last_span(timeout);
            let span = Span::mixed_site().located_at(first);
            let args = quote_spanned!(span=> #phantom, #name, #timeout);
            runtime_call(cx, "wait_for_timeout_site", args, (first, last), position)
        }
        None => {
            let span = Span::mixed_site().located_at(first);
            let args = quote_spanned!(span=> #phantom, #name);
            runtime_call(cx, "wait_for_site", args, (first, first), position)
        }
    }
}

/// `<krate>::__private::<function>(__durable_ctx, <args>)`, awaited unless
/// `position` wants the future.
///
/// The path's first tokens sit at `first` (the first token of the user's
/// argument) and its last at `last`, so the compiler, which spans an
/// expression from its first token to its last, underlines the user's
/// whole argument. The spans resolve at the macro's site (mixed-site), so
/// lints treat the call as generated code and the user's code cannot see
/// `__durable_ctx`.
fn runtime_call(
    cx: &Cx,
    function: &str,
    args: TokenStream,
    (first, last): (Span, Span),
    position: Position,
) -> TokenStream {
    let span = Span::mixed_site().located_at(first);
    let end = Span::mixed_site().located_at(last);
    let krate = respan(cx.krate.to_token_stream(), span);
    let function = Ident::new(function, end);
    let path = quote_spanned!(span=> #krate::__private::#function);
    let ctx = &cx.ctx;
    let call = quote_spanned!(span=> #path(#ctx, #args));
    match position {
        // An unmet bound on the call's future is reported at the call and
        // again at the `await`; at the argument's last token the second
        // report's "add `.await`" hint lands in the right place.
        Position::Value => {
            let await_ = Ident::new("await", end);
            quote_spanned!(span=> #call.#await_)
        }
        Position::Future => call,
    }
}

/// The spans of the first and last tokens of `tokens`.
fn first_and_last_span(tokens: &TokenStream) -> (Span, Span) {
    let mut tokens = tokens.clone().into_iter();
    let first = tokens
        .next()
        .map_or_else(Span::call_site, |tree| tree.span());
    let last = tokens.last().map_or(first, |tree| tree.span());
    (first, last)
}

/// `tokens` with every token (and nested group) spanned at `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let TokenTree::Group(group) = &tree {
                let mut inner = Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                tree = TokenTree::Group(inner);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expansion as text, whitespace-normalised by the token printer.
    fn expand(args: TokenStream, item: TokenStream) -> String {
        durable(args, item).to_string()
    }

    /// `tokens` as the token printer writes them.
    fn text(tokens: TokenStream) -> String {
        tokens.to_string()
    }

    #[test]
    fn generates_the_definition_the_impl_and_the_fn() {
        let out = expand(
            quote!(name = "user-provisioning", retry = RetryPolicy::no_retry()),
            quote! {
                /// Docs.
                pub async fn provision(ctx: &Ctx, signup: Signup) -> Result<u32, String> {
                    let charge = step!("charge-card", charge(&signup).await)?;
                    Ok(charge)
                }
            },
        );
        for expected in [
            quote!(
                pub struct __durable_provision;
            ),
            quote!(impl::durable::__private::Workflow for __durable_provision),
            quote!(
                type Input = Signup;
                type Output = Result<u32, String>;
            ),
            quote!(
                const NAME: &'static str = "user-provisioning";
            ),
            quote!(
                const SITES: &'static [::durable::__private::SiteDecl] =
                    &[::durable::__private::SiteDecl {
                        name: "charge-card",
                        kind: ::durable::__private::SiteKind::Step,
                        guard: ::core::option::Option::None,
                    }];
            ),
            quote!(let __durable_site_0 = ::core::marker::PhantomData;),
            quote!((&::durable::__private::step_probe(__durable_site_0)).site_types()),
            quote!(::core::option::Option::Some(RetryPolicy::no_retry())),
            quote!(let ctx: &Ctx = __durable_ctx;),
            quote!(let signup: Signup = __durable_input;),
            quote!(step!(@__durable_expanded (
                ::durable::__private::step_site(__durable_ctx, __durable_site_0, "charge-card",
                    ::core::option::Option::None::<&()>, ::core::option::Option::None,
                    ::core::option::Option::None, || async { charge(&signup).await }).await
            ))),
            quote!(
                #[doc = r" Docs."]
                pub fn provision(_: ::durable::__private::WorkflowMarker) -> __durable_provision {
                    __durable_provision
                }
            ),
        ] {
            assert!(
                out.contains(&text(expected.clone())),
                "missing {expected}\nin {out}"
            );
        }
        assert!(!out.contains("compile_error"));
    }

    #[test]
    fn joined_steps_are_futures() {
        let out = expand(
            TokenStream::new(),
            quote! {
                async fn f(_ctx: &Ctx, _n: u32) {
                    let (a, b) = tokio::join!(step!("a", g().await), step!("b", g().await));
                }
            },
        );
        let call = |(name, site): (&str, &str)| {
            let name = LitStr::new(name, Span::call_site());
            let site = Ident::new(site, Span::call_site());
            text(quote!(
                ::durable::__private::step_site(__durable_ctx, #site, #name,
                    ::core::option::Option::None::<&()>, ::core::option::Option::None,
                    ::core::option::Option::None, || async { g().await })
            ))
        };
        for name in [("a", "__durable_site_0"), ("b", "__durable_site_1")] {
            assert!(out.contains(&call(name)), "{out}");
            assert!(!out.contains(&format!("{} . await", call(name))), "{out}");
        }
    }

    #[test]
    fn sleeps_and_waits_become_runtime_calls() {
        let out = expand(
            TokenStream::new(),
            quote! {
                async fn f(_ctx: &Ctx, _n: u32) -> Result<(), String> {
                    step!("create-draft", g().await)?;
                    let approval: Option<Approval> = wait_for!("approval", timeout = days(3));
                    let payload: Approval = wait_for!("other-event");
                    sleep!("cool-off", Duration::from_secs(86400));
                    sleep_until!["launch", SystemTime::now() + d];
                    let (a, b) = tokio::join!(wait_for!("joined"), sleep!("joined-nap", d));
                    Ok(())
                }
            },
        );
        let sites = [
            ("create-draft", "Step"),
            ("approval", "Wait"),
            ("other-event", "Wait"),
            ("cool-off", "Sleep"),
            ("launch", "Sleep"),
            ("joined", "Wait"),
            ("joined-nap", "Sleep"),
        ]
        .map(|(name, kind)| {
            let kind = Ident::new(kind, Span::call_site());
            quote!(::durable::__private::SiteDecl {
                name: #name,
                kind: ::durable::__private::SiteKind::#kind,
                guard: ::core::option::Option::None,
            })
        });
        for expected in [
            quote!(
                const SITES: &'static [::durable::__private::SiteDecl] = &[#(#sites),*];
            ),
            quote!(wait_for!(@__durable_expanded (
                ::durable::__private::wait_for_timeout_site(__durable_ctx, __durable_site_1, "approval", days(3)).await
            ))),
            quote!(wait_for!(@__durable_expanded (
                ::durable::__private::wait_for_site(__durable_ctx, __durable_site_2, "other-event").await
            ))),
            quote!(sleep!(@__durable_expanded (
                ::durable::__private::sleep(__durable_ctx, "cool-off", Duration::from_secs(86400)).await
            ))),
            quote!(sleep_until![@__durable_expanded (
                ::durable::__private::sleep_until(__durable_ctx, "launch", SystemTime::now() + d).await
            )]),
            quote!(tokio::join!(
                wait_for!(@__durable_expanded (
                    ::durable::__private::wait_for_site(__durable_ctx, __durable_site_5, "joined")
                )),
                sleep!(@__durable_expanded (
                    ::durable::__private::sleep(__durable_ctx, "joined-nap", d)
                ))
            )),
        ] {
            assert!(
                out.contains(&text(expected.clone())),
                "missing {expected}\nin {out}"
            );
        }
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn inner_attributes_move_onto_the_binding() {
        let out = expand(
            TokenStream::new(),
            quote!(
                async fn f(_ctx: &Ctx, _n: u32) {
                    #![allow(unused)]
                    let x = 1;
                }
            ),
        );
        let expected = text(quote!(#[allow(unused)] let __durable_ret: () = { let x = 1; };));
        assert!(out.contains(&expected), "{out}");
    }

    #[test]
    fn an_error_keeps_the_item_without_the_body() {
        let out = expand(
            quote!(crate = "::renamed"),
            quote!(
                async fn f(_ctx: &Ctx, _n: u32) -> Result<u32, String> {
                    step!("x")
                }
            ),
        );
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains(&text(
            quote!(impl::renamed::__private::Workflow for __durable_f)
        )));
        assert!(out.contains("unimplemented"));
        assert!(!out.contains("__durable_expanded"));
        assert!(out.contains(&text(quote!(fn f(_: ::renamed::__private::WorkflowMarker)))));
    }

    #[test]
    fn a_non_fn_is_handed_back_unchanged() {
        let out = expand(
            TokenStream::new(),
            quote!(
                struct S;
            ),
        );
        assert!(
            out.starts_with(&text(quote!(
                struct S;
            ))),
            "{out}"
        );
        assert!(out.contains("compile_error"));
    }
}
