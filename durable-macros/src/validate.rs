//! The checks that span several sites (unique names, no nesting) or several
//! pieces (the workflow's name), and the accumulator every phase reports to.

use proc_macro2::Span;
use syn::LitStr;

use crate::args::Args;
use crate::ast::Workflow;
use crate::sites::{Body, Site};

/// Every error of one `#[durable]` invocation, folded into one with
/// [`syn::Error::combine`] so that one build shows them all (serde's `Ctxt`).
#[derive(Default)]
pub(crate) struct Errors {
    /// The errors so far, combined; `None` while there are none.
    combined: Option<syn::Error>,
}

impl Errors {
    /// Adds an error.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.combined {
            Some(combined) => combined.combine(error),
            None => self.combined = Some(error),
        }
    }

    /// The combined error, if any was pushed.
    pub(crate) fn into_error(self) -> Option<syn::Error> {
        self.combined
    }

    /// Each message, in the order pushed (for tests).
    #[cfg(test)]
    pub(crate) fn messages(&self) -> Vec<String> {
        self.combined
            .iter()
            .flat_map(|combined| combined.clone().into_iter())
            .map(|error| error.to_string())
            .collect()
    }
}

/// Runs every check that needs the whole picture.
pub(crate) fn check(args: &Args, workflow: &Workflow, body: &Body, errors: &mut Errors) {
    check_workflow_name(args, workflow, errors);
    for site in &body.sites {
        if let Some(name) = site.name() {
            check_site_name(name, errors);
        }
        check_not_nested(site, body, errors);
    }
    check_unique(body, errors);
}

/// `name = ""` cannot name the workflow.
fn check_workflow_name(args: &Args, workflow: &Workflow, errors: &mut Errors) {
    let Some(name) = &args.name else { return };
    if name.value().trim().is_empty() {
        errors.push(syn::Error::new(
            name.span(),
            format!(
                "the workflow name must not be empty: instances are stored under it; remove \
                 `name = {:?}` to use the fn's name, \"{}\"",
                name.value(),
                syn::ext::IdentExt::unraw(&workflow.ident)
            ),
        ));
    }
}

/// A site's name cannot be empty (or blank).
fn check_site_name(name: &LitStr, errors: &mut Errors) {
    if name.value().trim().is_empty() {
        errors.push(syn::Error::new(
            name.span(),
            "a step name must not be empty: it keys the step's checkpoints; use a short, stable \
             name like \"charge-card\"",
        ));
    }
}

/// A site inside another site's arguments (a step in a step's body) would
/// be skipped on replay and repeated on retry; one in a nested fn cannot
/// reach the workflow's context.
fn check_not_nested(site: &Site, body: &Body, errors: &mut Errors) {
    if site.in_nested_fn {
        let name = site.kind.macro_name();
        errors.push(syn::Error::new_spanned(
            site.tokens(),
            format!(
                "{name} cannot be used inside a nested fn: only the workflow's own body has its \
                 context; move it into the workflow's body, or give the fn a `ctx: &Ctx` \
                 parameter and call `ctx.step(\"name\", || async {{ .. }})`"
            ),
        ));
        return;
    }
    let Some(outer) = site.enclosing.map(|index| &body.sites[index]) else {
        return;
    };
    let outer_name = outer.name().map_or_else(
        || "another step".to_string(),
        |name| format!("step {:?}", name.value()),
    );
    errors.push(syn::Error::new_spanned(
        site.tokens(),
        format!(
            "{} cannot be used inside the body of {outer_name}: a step's body is run again on \
             retry and skipped on replay; move this {} out, before or after {outer_name}",
            site.kind.macro_name(),
            site.kind.macro_name(),
        ),
    ));
}

/// Names are unique within a workflow, across every kind of site. The
/// error goes on the second use and says where the first one is.
fn check_unique(body: &Body, errors: &mut Errors) {
    let mut seen: Vec<&Site> = Vec::new();
    for site in body.top_level_sites() {
        let Some(name) = site.name() else { continue };
        let Some(first) = seen.iter().find(|first| {
            first
                .name()
                .is_some_and(|seen| seen.value() == name.value())
        }) else {
            seen.push(site);
            continue;
        };
        let first_name = first.name().map_or_else(|| name.span(), LitStr::span);
        let by = if first.kind == site.kind {
            String::new()
        } else {
            format!(" by {}", first.kind.macro_name())
        };
        let rule = "step names must be unique within a workflow (a step inside a loop is one \
                    name with many occurrences)";
        match line_of(first_name) {
            Some(line) => errors.push(syn::Error::new(
                name.span(),
                format!(
                    "duplicate step name {:?}: already used{by} on line {line}; {rule}",
                    name.value()
                ),
            )),
            None => {
                errors.push(syn::Error::new(
                    name.span(),
                    format!(
                        "duplicate step name {:?}: already used{by} above; {rule}",
                        name.value()
                    ),
                ));
                errors.push(syn::Error::new(
                    first_name,
                    format!("step name {:?} first used here", name.value()),
                ));
            }
        }
    }
}

/// The line of `span` in its file, when running inside the compiler.
fn line_of(span: Span) -> Option<usize> {
    if proc_macro::is_available() {
        Some(span.unwrap().line())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proc_macro2::TokenStream;
    use quote::quote;

    fn check_body(args: TokenStream, tokens: TokenStream) -> Vec<String> {
        let mut errors = Errors::default();
        let args = Args::parse(args, &mut errors);
        let item = quote!(async fn provision(ctx: &Ctx, input: u32) #tokens);
        let workflow = Workflow::parse(item, &mut errors).unwrap();
        let body = Body::scan(workflow.block.clone(), &mut errors);
        check(&args, &workflow, &body, &mut errors);
        errors.messages()
    }

    #[test]
    fn a_good_body_passes() {
        let errors = check_body(
            quote!(),
            quote!({
                for x in xs {
                    step!("loop", f(x).await)?;
                }
                step!("other", f(1).await)?;
            }),
        );
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn reports_every_duplicate_and_empty_name() {
        let errors = check_body(
            quote!(name = ""),
            quote!({
                step!("a", f().await)?;
                step!("b", f().await)?;
                step!("a", f().await)?;
                step!("", f().await)?;
                tokio::join!(step!("b", f().await), step!("c", f().await));
            }),
        );
        assert_eq!(
            errors,
            [
                "the workflow name must not be empty: instances are stored under it; remove \
                 `name = \"\"` to use the fn's name, \"provision\"",
                "a step name must not be empty: it keys the step's checkpoints; use a short, \
                 stable name like \"charge-card\"",
                "duplicate step name \"a\": already used above; step names must be unique within \
                 a workflow (a step inside a loop is one name with many occurrences)",
                "step name \"a\" first used here",
                "duplicate step name \"b\": already used above; step names must be unique within \
                 a workflow (a step inside a loop is one name with many occurrences)",
                "step name \"b\" first used here",
            ]
        );
    }

    #[test]
    fn a_nested_step_is_refused() {
        let errors = check_body(
            quote!(),
            quote!({
                step!("outer", async { step!("inner", f().await) }.await)?;
            }),
        );
        assert_eq!(
            errors,
            [
                "`step!` cannot be used inside the body of step \"outer\": a step's body is run \
              again on retry and skipped on replay; move this `step!` out, before or after step \
              \"outer\""
            ]
        );
    }

    #[test]
    fn the_accumulator_keeps_order() {
        let mut errors = Errors::default();
        assert!(errors.messages().is_empty());
        errors.push(syn::Error::new(Span::call_site(), "one"));
        errors.push(syn::Error::new(Span::call_site(), "two"));
        assert_eq!(errors.messages(), ["one", "two"]);
    }
}
