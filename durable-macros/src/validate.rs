//! The checks that span several sites (names unique across every kind, no
//! nesting) or several pieces (the workflow's name), and the accumulator
//! every phase reports to.

use proc_macro2::Span;
use syn::LitStr;

use crate::args::Args;
use crate::ast::Workflow;
use crate::sites::{Body, Site, SiteKind};

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
            check_site_name(site.kind, name, errors);
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
fn check_site_name(kind: SiteKind, name: &LitStr, errors: &mut Errors) {
    if !name.value().trim().is_empty() {
        return;
    }
    let message = match kind {
        SiteKind::Step => {
            "a step name must not be empty: it keys the step's checkpoints; use a short, stable \
             name like \"charge-card\""
        }
        SiteKind::Sleep | SiteKind::SleepUntil => {
            "a sleep name must not be empty: it keys the sleep's checkpointed deadline; use a \
             short, stable name like \"cool-off\""
        }
        SiteKind::WaitFor => {
            "a wait name must not be empty: it is the name of the event the wait receives, and \
             keys its checkpoint; use a short, stable name like \"manager-approval\""
        }
        SiteKind::Patched => {
            "a patch name must not be empty: it names the change in the workflow's manifest; \
             use a short, stable name like \"add-fraud-check\""
        }
    };
    errors.push(syn::Error::new(name.span(), message));
}

/// A site inside another site's arguments (a sleep in a step's body) would
/// be skipped on replay and repeated on retry; one in a nested fn cannot
/// reach the workflow's context.
fn check_not_nested(site: &Site, body: &Body, errors: &mut Errors) {
    let name = site.kind.macro_name();
    if site.in_nested_fn {
        let call = match site.kind {
            SiteKind::Step => "`ctx.step(\"name\", || async { .. })`",
            SiteKind::Sleep => "`ctx.sleep(\"name\", duration)`",
            SiteKind::SleepUntil => "`ctx.sleep_until(\"name\", time)`",
            SiteKind::WaitFor => "`ctx.wait_for(\"name\")`",
            SiteKind::Patched => "nothing: a patch belongs in the workflow's own body",
        };
        errors.push(syn::Error::new_spanned(
            site.tokens(),
            format!(
                "{name} cannot be used inside a nested fn: only the workflow's own body has its \
                 context; move it into the workflow's body, or give the fn a `ctx: &Ctx` \
                 parameter and call {call}"
            ),
        ));
        return;
    }
    let Some(outer) = site.enclosing.map(|index| &body.sites[index]) else {
        return;
    };
    let message = if outer.kind == SiteKind::Step {
        let outer_name = outer.name().map_or_else(
            || "another step".to_string(),
            |outer_name| format!("step {:?}", outer_name.value()),
        );
        let hint = match site.kind {
            SiteKind::Step => "",
            SiteKind::Sleep | SiteKind::SleepUntil => {
                " (to pause between attempts, give the step a `retry` policy: it backs off)"
            }
            SiteKind::WaitFor => " (wait first, then pass the payload into the step)",
            SiteKind::Patched => " (decide the patch first, then choose the step)",
        };
        format!(
            "{name} cannot be used inside the body of {outer_name}: a step's body is run again \
             on retry and skipped on replay; move this {name} out, before or after \
             {outer_name}{hint}"
        )
    } else {
        let outer_macro = outer.kind.macro_name();
        let outer_name = outer.name().map_or_else(
            || outer_macro.to_string(),
            |outer_name| format!("{outer_macro} {:?}", outer_name.value()),
        );
        format!(
            "{name} cannot be used inside the arguments of {outer_name}: each goes in its own \
             statement; move this {name} out, before the {outer_macro}, and pass its value in a \
             variable"
        )
    };
    errors.push(syn::Error::new_spanned(site.tokens(), message));
}

/// Names are unique within a workflow, across every kind of site: steps,
/// sleeps and waits share one namespace. The error goes on the second use
/// and says where the first one is, and what it was when not of the same
/// kind. Blank names are left to `check_site_name`.
fn check_unique(body: &Body, errors: &mut Errors) {
    let mut seen: Vec<&Site> = Vec::new();
    for site in body.top_level_sites() {
        // An empty name is already reported as such.
        let Some(name) = site.name().filter(|name| !name.value().trim().is_empty()) else {
            continue;
        };
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
        let rule = if first.kind == SiteKind::Step && site.kind == SiteKind::Step {
            "step names must be unique within a workflow (a step inside a loop is one name with \
             many occurrences)"
        } else {
            "steps, sleeps and waits share one namespace of names, unique within a workflow (one \
             inside a loop is one name with many occurrences)"
        };
        let noun = site.kind.noun();
        match line_of(first_name) {
            Some(line) => errors.push(syn::Error::new(
                name.span(),
                format!(
                    "duplicate {noun} name {:?}: already used{by} on line {line}; {rule}",
                    name.value()
                ),
            )),
            None => {
                errors.push(syn::Error::new(
                    name.span(),
                    format!(
                        "duplicate {noun} name {:?}: already used{by} above; {rule}",
                        name.value()
                    ),
                ));
                errors.push(syn::Error::new(
                    first_name,
                    format!(
                        "{} name {:?} first used here",
                        first.kind.noun(),
                        name.value()
                    ),
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
    fn steps_sleeps_and_waits_share_one_namespace() {
        let errors = check_body(
            quote!(),
            quote!({
                step!("a", f().await)?;
                sleep!("b", d);
                let x: u32 = wait_for!("c");
                sleep!("a", d);
                let y: u32 = wait_for!("b", timeout = d);
                let z: u32 = wait_for!("c");
                sleep_until!("c", t);
                step!("b", f().await)?;
                for _ in 0..3 {
                    sleep!("in-loop", d);
                }
            }),
        );
        let rule = "steps, sleeps and waits share one namespace of names, unique within a \
                    workflow (one inside a loop is one name with many occurrences)";
        let expected: Vec<String> = [
            ("sleep", "a", " by `step!`", "step"),
            ("wait", "b", " by `sleep!`", "sleep"),
            ("wait", "c", "", "wait"),
            ("sleep", "c", " by `wait_for!`", "wait"),
            ("step", "b", " by `sleep!`", "sleep"),
        ]
        .iter()
        .flat_map(|(noun, name, by, first)| {
            [
                format!("duplicate {noun} name {name:?}: already used{by} above; {rule}"),
                format!("{first} name {name:?} first used here"),
            ]
        })
        .collect();
        assert_eq!(errors, expected);
    }

    #[test]
    fn empty_sleep_and_wait_names_are_refused() {
        let errors = check_body(
            quote!(),
            quote!({
                sleep!(" ", d);
                sleep_until!("", t);
                let x: u32 = wait_for!("");
            }),
        );
        assert_eq!(
            errors,
            [
                "a sleep name must not be empty: it keys the sleep's checkpointed deadline; use a \
                 short, stable name like \"cool-off\"",
                "a sleep name must not be empty: it keys the sleep's checkpointed deadline; use a \
                 short, stable name like \"cool-off\"",
                "a wait name must not be empty: it is the name of the event the wait receives, \
                 and keys its checkpoint; use a short, stable name like \"manager-approval\"",
            ]
        );
    }

    #[test]
    fn sleeps_and_waits_in_a_step_body_or_site_arguments_are_refused() {
        let errors = check_body(
            quote!(),
            quote!({
                step!(
                    "outer",
                    async {
                        sleep!("nap", d);
                        sleep_until!("nap-2", t);
                        wait_for!("event")
                    }
                    .await
                )?;
                sleep!("long", wait_for!("how-long"));
                let x: u32 = wait_for!("w", timeout = step!("t", f().await)?);
            }),
        );
        let in_step = |name: &str, hint: &str| {
            format!(
                "{name} cannot be used inside the body of step \"outer\": a step's body is run \
                 again on retry and skipped on replay; move this {name} out, before or after step \
                 \"outer\"{hint}"
            )
        };
        let sleep_hint =
            " (to pause between attempts, give the step a `retry` policy: it backs off)";
        let in_args = |name: &str, outer: &str, outer_name: &str| {
            format!(
                "{name} cannot be used inside the arguments of {outer} {outer_name:?}: each goes in \
                 its own statement; move this {name} out, before the {outer}, and pass its value \
                 in a variable"
            )
        };
        assert_eq!(
            errors,
            [
                in_step("`sleep!`", sleep_hint),
                in_step("`sleep_until!`", sleep_hint),
                in_step(
                    "`wait_for!`",
                    " (wait first, then pass the payload into the step)"
                ),
                in_args("`wait_for!`", "`sleep!`", "long"),
                in_args("`step!`", "`wait_for!`", "w"),
            ]
        );
    }

    #[test]
    fn sleeps_and_waits_in_a_nested_fn_point_at_the_ctx_methods() {
        let errors = check_body(
            quote!(),
            quote!({
                async fn helper() -> u32 {
                    sleep!("nap", d);
                    wait_for!("event")
                }
            }),
        );
        let message = |name: &str, call: &str| {
            format!(
                "{name} cannot be used inside a nested fn: only the workflow's own body has its \
                 context; move it into the workflow's body, or give the fn a `ctx: &Ctx` \
                 parameter and call {call}"
            )
        };
        assert_eq!(
            errors,
            [
                message("`sleep!`", "`ctx.sleep(\"name\", duration)`"),
                message("`wait_for!`", "`ctx.wait_for(\"name\")`"),
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
