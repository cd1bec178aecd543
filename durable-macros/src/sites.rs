//! The token scan that finds every DSL site (`step!(..)`, `sleep!(..)`,
//! `sleep_until!(..)`, `wait_for!(..)`) in a workflow body.
//!
//! A syn `VisitMut` cannot see inside other macros' arguments, and a site is
//! often written there: `tokio::join!(step!("a", ..), step!("b", ..))`,
//! `println!("{:?}", step!("c", ..))`. So the body is scanned as tokens: any
//! `step` `!` `(group)` sequence (or `sleep`, `sleep_until`, `wait_for`), at
//! any depth, is a site. The scan keeps the body as a tree of the original
//! tokens with each site marked, so that `expand` can write it back with only
//! the sites replaced.
//!
//! A site is awaited in place (`step!(..)?` is a `Result`), except where a
//! future is wanted: a whole argument of `join!` / `try_join!`, or the
//! future of a `select!` branch (`pat = step!(..) => ..`). There it is left
//! un-awaited, so that joined sites run concurrently.
//!
//! Inside a local `macro_rules!` definition a site's expressions may hold
//! `$var` fragments, which only parse once the macro is used; there they
//! are taken as tokens (the name must still be a literal).
//!
//! Nested `fn` items cannot reach the workflow's context: their sites are
//! recorded (to be reported) but never expanded, and a nested `#[durable]`
//! fn is left to its own attribute. A `$step` macro variable is not a site.

use proc_macro2::{Delimiter, Group, Ident, Punct, Spacing, TokenStream, TokenTree};
use quote::ToTokens;
use syn::parse::{ParseStream, Parser};
use syn::{Expr, LitStr, Token};

use crate::validate::Errors;

/// The kinds of DSL macro. They share one namespace of names: a workflow
/// cannot have a step and a sleep both called `"x"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SiteKind {
    /// `step!(name, [retry = policy,] body)`: a checkpointed step.
    Step,
    /// `sleep!(name, duration)`: a durable timer, its deadline checkpointed.
    Sleep,
    /// `sleep_until!(name, time)`: a durable timer to a `SystemTime`.
    SleepUntil,
    /// `wait_for!(name [, timeout = duration])`: a wait for the event of
    /// that name, its payload checkpointed.
    WaitFor,
    /// `patched!(name)`: a planned change; `true` for instances started
    /// with it, `false` for older ones.
    Patched,
}

impl SiteKind {
    /// The kind whose macro is called `ident`, if any.
    fn from_ident(ident: &Ident) -> Option<SiteKind> {
        [
            SiteKind::Step,
            SiteKind::Sleep,
            SiteKind::SleepUntil,
            SiteKind::WaitFor,
            SiteKind::Patched,
        ]
        .into_iter()
        .find(|kind| ident == kind.ident())
    }

    /// The macro's name as an identifier: `step`.
    fn ident(self) -> &'static str {
        match self {
            SiteKind::Step => "step",
            SiteKind::Sleep => "sleep",
            SiteKind::SleepUntil => "sleep_until",
            SiteKind::WaitFor => "wait_for",
            SiteKind::Patched => "patched",
        }
    }

    /// The macro as users write it, for messages: "`step!`".
    pub(crate) fn macro_name(self) -> &'static str {
        match self {
            SiteKind::Step => "`step!`",
            SiteKind::Sleep => "`sleep!`",
            SiteKind::SleepUntil => "`sleep_until!`",
            SiteKind::WaitFor => "`wait_for!`",
            SiteKind::Patched => "`patched!`",
        }
    }

    /// What one site of the kind is called in messages: "step".
    pub(crate) fn noun(self) -> &'static str {
        match self {
            SiteKind::Step => "step",
            SiteKind::Sleep | SiteKind::SleepUntil => "sleep",
            SiteKind::WaitFor => "wait",
            SiteKind::Patched => "patch",
        }
    }

    /// A typical use, for messages: `step!("charge-card", <body>)`.
    pub(crate) fn usage(self) -> &'static str {
        match self {
            SiteKind::Step => "`step!(\"charge-card\", <body>)`",
            SiteKind::Sleep => "`sleep!(\"cool-off\", <Duration>)`",
            SiteKind::SleepUntil => "`sleep_until!(\"launch\", <SystemTime>)`",
            SiteKind::WaitFor => "`wait_for!(\"manager-approval\")`",
            SiteKind::Patched => "`if patched!(\"add-fraud-check\") { .. }`",
        }
    }
}

/// One DSL macro invocation found in the body, with its original tokens.
pub(crate) struct Site {
    /// Which macro this is.
    pub kind: SiteKind,
    /// The macro's name token (`step`, `sleep`...), kept so the rewrite
    /// still goes through the user's import of it.
    pub ident: Ident,
    /// The `!` token.
    pub bang: Punct,
    /// The invocation's argument group as written, delimiter and span kept.
    pub group: Group,
    /// The parsed arguments; `None` when they did not parse (the error is
    /// already reported).
    pub args: Option<SiteArgs>,
    /// The index of the site whose arguments contain this one, if any: a
    /// step or sleep nested in a step's body, say.
    pub enclosing: Option<usize>,
    /// Whether the site is inside a nested `fn` item, out of the
    /// workflow's reach.
    pub in_nested_fn: bool,
    /// Whether the site stands for its value or for a future of it.
    pub position: Position,
}

impl Site {
    /// The whole invocation, `step!(..)`, for spanning errors over it.
    pub(crate) fn tokens(&self) -> TokenStream {
        let mut tokens = TokenStream::new();
        tokens.extend([
            TokenTree::Ident(self.ident.clone()),
            TokenTree::Punct(self.bang.clone()),
            TokenTree::Group(self.group.clone()),
        ]);
        tokens
    }

    /// Whether the site is one the expansion rewrites: not nested in
    /// another site, not in a nested fn.
    pub(crate) fn is_expanded(&self) -> bool {
        self.enclosing.is_none() && !self.in_nested_fn
    }

    /// The site's name literal, when its arguments parsed.
    pub(crate) fn name(&self) -> Option<&LitStr> {
        self.args.as_ref().map(|args| &args.name)
    }
}

/// What a site's expansion must evaluate to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Position {
    /// The outcome, awaited in place: `step!(..)?`.
    Value,
    /// The future of the outcome: a whole argument of `join!`/`try_join!`,
    /// or the future of a `select!` branch.
    Future,
}

/// Where a token stream sits, as far as the scan cares.
#[derive(Clone, Copy)]
struct Scope {
    /// The macro whose arguments the stream is.
    context: Context,
    /// The site whose arguments hold the stream, if any.
    enclosing: Option<usize>,
    /// Whether the stream is inside a nested `fn` item.
    in_nested_fn: bool,
    /// Whether the stream is inside a `macro_rules!` definition, where
    /// `$var` fragments make a site's expressions unparsable until the macro
    /// is used: there they are taken as tokens.
    in_macro_rules: bool,
}

/// The macro whose arguments a token stream is, as far as futures go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Context {
    /// Anything else: sites are values.
    Plain,
    /// `join!` or `try_join!` (tokio's or futures'): comma-separated futures.
    Join,
    /// `select!`: branches `pattern = future [, if cond] => handler`.
    Select,
}

impl Context {
    /// The context of the arguments of macro `name`.
    fn of_macro(name: &Ident) -> Context {
        if name == "join" || name == "try_join" {
            Context::Join
        } else if name == "select" {
            Context::Select
        } else {
            Context::Plain
        }
    }
}

/// The parsed arguments of a site.
pub(crate) struct SiteArgs {
    /// The name literal; unique within the workflow (checked in `validate`).
    pub name: LitStr,
    /// What the kind takes besides the name.
    pub kind: KindArgs,
}

/// The arguments that depend on the site's kind.
pub(crate) enum KindArgs {
    /// `step!`'s arguments after the name.
    Step {
        /// `retry = <expr>`, if given, as its tokens.
        retry: Option<TokenStream>,
        /// `key = <expr>`, if given: the step's identity within its name
        /// (instead of its occurrence number), as its tokens.
        key: Option<TokenStream>,
        /// `timeout = <Duration>`, if given: each attempt's time limit, as
        /// its tokens.
        timeout: Option<TokenStream>,
        /// The body, an expression evaluating to `Result<T, E>`, as its
        /// tokens.
        body: TokenStream,
        /// `compensate = <closure>` (after the body, or among the options),
        /// if given: undoes the step's effect, as its tokens.
        compensate: Option<TokenStream>,
    },
    /// `sleep!`'s argument after the name.
    Sleep {
        /// The `Duration` expression, as its tokens.
        duration: TokenStream,
    },
    /// `sleep_until!`'s argument after the name.
    SleepUntil {
        /// The `SystemTime` expression, as its tokens.
        until: TokenStream,
    },
    /// `patched!` has nothing after the name.
    Patched,
    /// `wait_for!`'s arguments after the name.
    WaitFor {
        /// `timeout = <expr>`, if given, as the expression's tokens.
        timeout: Option<TokenStream>,
    },
}

/// A workflow body as a token tree with its sites marked.
pub(crate) struct Body {
    /// The body's braces, with their original span.
    pub group: Group,
    /// The tokens inside the braces.
    pub nodes: Vec<Node>,
    /// Every site in source order, including ones nested in another site's
    /// arguments (those are only reported, never expanded).
    pub sites: Vec<Site>,
}

/// A piece of the body's token tree.
pub(crate) enum Node {
    /// A token, or a group without any site inside: copied through as is.
    Tree(TokenTree),
    /// A group with at least one site inside.
    Group {
        /// The group as written; its delimiter and span are kept.
        group: Group,
        /// Its contents.
        nodes: Vec<Node>,
    },
    /// The site `sites[index]`, standing for its `step ! (..)` tokens.
    Site(usize),
}

impl Body {
    /// Scans the workflow's block (`{ ... }`). Malformed sites are reported
    /// to `errors` and kept with `args: None`.
    pub(crate) fn scan(block: Group, errors: &mut Errors) -> Body {
        let mut sites = Vec::new();
        let scope = Scope {
            context: Context::Plain,
            enclosing: None,
            in_nested_fn: false,
            in_macro_rules: false,
        };
        let (nodes, _) = scan_stream(block.stream(), scope, &mut sites, errors);
        Body {
            group: block,
            nodes,
            sites,
        }
    }

    /// The sites that get expanded: all but those nested in another site or
    /// in a nested fn.
    pub(crate) fn top_level_sites(&self) -> impl Iterator<Item = &Site> {
        self.sites.iter().filter(|site| site.is_expanded())
    }

    /// Each distinct top-level site (first use of each name), in source
    /// order, with its kind: the workflow's `SITES`.
    pub(crate) fn declared(&self) -> Vec<(&LitStr, SiteKind)> {
        let mut out: Vec<(&LitStr, SiteKind)> = Vec::new();
        for site in self.top_level_sites() {
            if let Some(name) = site.name()
                && !out.iter().any(|(seen, _)| seen.value() == name.value())
            {
                out.push((name, site.kind));
            }
        }
        out
    }

    /// Whether every site can be expanded: all parsed, none nested.
    pub(crate) fn is_expandable(&self) -> bool {
        self.sites
            .iter()
            .all(|site| site.args.is_some() && site.is_expanded())
    }
}

/// Scans one token stream; returns its nodes and whether it holds a site.
fn scan_stream(
    stream: TokenStream,
    scope: Scope,
    sites: &mut Vec<Site>,
    errors: &mut Errors,
) -> (Vec<Node>, bool) {
    let tokens: Vec<TokenTree> = stream.into_iter().collect();
    let mut nodes = Vec::with_capacity(tokens.len());
    let mut found = false;
    let mut i = 0;
    while i < tokens.len() {
        if let Some(end) = nested_fn_end(&tokens, i) {
            if !has_durable_attr(&tokens, i) {
                // Recorded to be reported; the tokens stay as written.
                let inner = Scope {
                    context: Context::Plain,
                    in_nested_fn: true,
                    ..scope
                };
                let rest: TokenStream = tokens[i + 2..end].iter().cloned().collect();
                scan_stream(rest, inner, sites, errors);
            }
            nodes.extend(tokens[i..end].iter().cloned().map(Node::Tree));
            i = end;
            continue;
        }
        if let Some((kind, ident, bang, group)) = site_at(&tokens, i) {
            let index = sites.len();
            let site = Site {
                kind,
                ident: ident.clone(),
                bang: bang.clone(),
                group: group.clone(),
                args: None,
                enclosing: scope.enclosing,
                in_nested_fn: scope.in_nested_fn,
                position: position(&tokens, i, scope.context),
            };
            let args = match parse_args(&site, scope.in_macro_rules) {
                Ok(args) => Some(args),
                Err(error) => {
                    errors.push(error);
                    None
                }
            };
            sites.push(Site { args, ..site });
            // Sites inside this one's arguments are recorded (to be
            // reported), but the arguments stay as written.
            let inner = Scope {
                context: Context::Plain,
                enclosing: Some(index),
                ..scope
            };
            scan_stream(group.stream(), inner, sites, errors);
            nodes.push(Node::Site(index));
            found = true;
            i += 3;
            continue;
        }
        match &tokens[i] {
            TokenTree::Group(group) => {
                let before = |back: usize| i.checked_sub(back).and_then(|j| tokens.get(j));
                let context = match (before(2), before(1)) {
                    (Some(TokenTree::Ident(name)), bang) if is_punct(bang, '!') => {
                        Context::of_macro(name)
                    }
                    _ => Context::Plain,
                };
                let defines_macro = matches!(before(3), Some(TokenTree::Ident(word)) if word == "macro_rules")
                    && is_punct(before(2), '!');
                let inner = Scope {
                    context,
                    in_macro_rules: scope.in_macro_rules || defines_macro,
                    ..scope
                };
                let (inner, inner_found) = scan_stream(group.stream(), inner, sites, errors);
                if inner_found {
                    found = true;
                    nodes.push(Node::Group {
                        group: group.clone(),
                        nodes: inner,
                    });
                } else {
                    nodes.push(Node::Tree(tokens[i].clone()));
                }
            }
            tree => nodes.push(Node::Tree(tree.clone())),
        }
        i += 1;
    }
    (nodes, found)
}

/// If `tokens[i..]` starts a site (`step` `!` `group`, or another kind's
/// name; not `$step`), returns its pieces.
fn site_at(tokens: &[TokenTree], i: usize) -> Option<(SiteKind, &Ident, &Punct, &Group)> {
    let TokenTree::Ident(ident) = tokens.get(i)? else {
        return None;
    };
    let kind = SiteKind::from_ident(ident)?;
    let TokenTree::Punct(bang) = tokens.get(i + 1)? else {
        return None;
    };
    let TokenTree::Group(group) = tokens.get(i + 2)? else {
        return None;
    };
    if bang.as_char() != '!' || is_punct(tokens.get(i.wrapping_sub(1)), '$') {
        return None;
    }
    Some((kind, ident, bang, group))
}

/// Where the site starting at `tokens[i]` stands in a `context` macro's
/// arguments: a future only when it is a whole `join!` argument or a whole
/// `select!` branch future.
fn position(tokens: &[TokenTree], i: usize, context: Context) -> Position {
    // Step back over a path prefix: `durable::step!`, `::durable::sleep!`.
    let mut start = i;
    while start >= 2 && is_punct(tokens.get(start - 1), ':') && is_punct(tokens.get(start - 2), ':')
    {
        start -= 2;
        if matches!(tokens.get(start.wrapping_sub(1)), Some(TokenTree::Ident(_))) {
            start -= 1;
        }
    }
    let before = start.checked_sub(1).and_then(|j| tokens.get(j));
    let after = tokens.get(i + 3);
    let is_future = match context {
        Context::Plain => false,
        Context::Join => {
            (before.is_none() || is_punct(before, ',') || is_punct(before, ';'))
                && (after.is_none() || is_punct(after, ','))
        }
        Context::Select => {
            let assigned = matches!(before, Some(TokenTree::Punct(eq))
                if eq.as_char() == '=' && eq.spacing() == Spacing::Alone)
                && !matches!(start.checked_sub(2).and_then(|j| tokens.get(j)),
                    Some(TokenTree::Punct(p)) if p.spacing() == Spacing::Joint);
            let arrow = matches!(after, Some(TokenTree::Punct(eq))
                if eq.as_char() == '=' && eq.spacing() == Spacing::Joint)
                && is_punct(tokens.get(i + 4), '>');
            let guard = is_punct(after, ',')
                && matches!(tokens.get(i + 4), Some(TokenTree::Ident(word)) if word == "if");
            assigned && (arrow || guard)
        }
    };
    if is_future {
        Position::Future
    } else {
        Position::Value
    }
}

/// If `tokens[i..]` starts a nested fn item (`fn name ...`), returns the
/// index just past its body (or past its `;` when it has none).
fn nested_fn_end(tokens: &[TokenTree], i: usize) -> Option<usize> {
    match (tokens.get(i), tokens.get(i + 1)) {
        (Some(TokenTree::Ident(keyword)), Some(TokenTree::Ident(_))) if keyword == "fn" => {}
        _ => return None,
    }
    let mut end = i + 2;
    while let Some(tree) = tokens.get(end) {
        end += 1;
        match tree {
            TokenTree::Group(group) if group.delimiter() == Delimiter::Brace => break,
            TokenTree::Punct(punct) if punct.as_char() == ';' => break,
            _ => {}
        }
    }
    Some(end)
}

/// Whether the fn item whose `fn` is `tokens[i]` has a `#[durable]`
/// attribute (any path ending in `durable`), looking back over its
/// qualifiers and visibility.
fn has_durable_attr(tokens: &[TokenTree], i: usize) -> bool {
    let mut j = i;
    while let Some(tree) = j.checked_sub(1).and_then(|k| tokens.get(k)) {
        let qualifier = match tree {
            TokenTree::Ident(word) => ["async", "unsafe", "const", "extern", "pub", "safe"]
                .iter()
                .any(|q| word == q),
            TokenTree::Literal(_) => true,
            TokenTree::Group(group) => group.delimiter() == Delimiter::Parenthesis,
            TokenTree::Punct(_) => false,
        };
        if !qualifier {
            break;
        }
        j -= 1;
    }
    while j >= 2 {
        let (TokenTree::Punct(pound), TokenTree::Group(attr)) = (&tokens[j - 2], &tokens[j - 1])
        else {
            break;
        };
        if pound.as_char() != '#' || attr.delimiter() != Delimiter::Bracket {
            break;
        }
        let path_end = attr
            .stream()
            .into_iter()
            .take_while(|tree| matches!(tree, TokenTree::Ident(_)) || is_punct(Some(tree), ':'))
            .last();
        if matches!(path_end, Some(TokenTree::Ident(last)) if last == "durable") {
            return true;
        }
        j -= 2;
    }
    false
}

/// Whether `tree` is the punctuation `ch`.
fn is_punct(tree: Option<&TokenTree>, ch: char) -> bool {
    matches!(tree, Some(TokenTree::Punct(punct)) if punct.as_char() == ch)
}

/// Parses a site's arguments per its kind; `lenient` inside `macro_rules!`.
fn parse_args(site: &Site, lenient: bool) -> syn::Result<SiteArgs> {
    let parser = |input: ParseStream| match site.kind {
        SiteKind::Step => parse_step(input, site, lenient),
        SiteKind::Sleep | SiteKind::SleepUntil => parse_sleep(input, site, lenient),
        SiteKind::WaitFor => parse_wait_for(input, site, lenient),
        SiteKind::Patched => parse_patched(input, site),
    };
    parser.parse2(site.group.stream())
}

/// Parses `step!`'s arguments: `"name", [key = <expr>,] [retry = <expr>,] body [,]`
/// (the options in any order).
/// `lenient`: an expression that does not parse (it holds `$var`
/// fragments) is taken as the tokens up to the next comma.
fn parse_step(input: ParseStream, site: &Site, lenient: bool) -> syn::Result<SiteArgs> {
    let name = parse_name(input, site)?;
    let missing_body = || {
        syn::Error::new_spanned(
            site.tokens(),
            format!(
                "step {:?} has no body; write `step!({:?}, <expression returning Result>)`",
                name.value(),
                name.value()
            ),
        )
    };
    if input.is_empty() {
        return Err(missing_body());
    }
    if !input.peek(Token![,]) {
        return Err(input.error("expected `,` after the step name"));
    }
    input.parse::<Token![,]>()?;
    if input.is_empty() {
        return Err(missing_body());
    }

    let mut retry = None;
    let mut key = None;
    let mut timeout = None;
    let mut compensate = None;
    while input.peek(syn::Ident) && input.peek2(Token![=]) && !input.peek2(Token![==]) {
        let option: Ident = input.parse()?;
        let slot = if option == "retry" {
            &mut retry
        } else if option == "key" {
            &mut key
        } else if option == "timeout" {
            &mut timeout
        } else if option == "compensate" {
            &mut compensate
        } else {
            return Err(syn::Error::new_spanned(
                &option,
                format!(
                    "unknown step option `{option}`; the options are `key = <serde value>`, \
                     `retry = <RetryPolicy>` and `timeout = <Duration>`, between the name and \
                     the body, and `compensate = |value| async move {{ .. }}`"
                ),
            ));
        };
        if slot.is_some() {
            return Err(syn::Error::new_spanned(
                &option,
                format!("step option `{option}` is given twice"),
            ));
        }
        let eq = input.parse::<Token![=]>()?;
        let value = parse_expr(input, lenient)?;
        if option == "timeout" {
            check_step_timeout(&name, &option, &eq, &value)?;
        }
        if option == "compensate" {
            check_compensate(&name, &option, &eq, &value)?;
        }
        *slot = Some(value);
        if input.is_empty() {
            return Err(missing_body());
        }
        input.parse::<Token![,]>()?;
        if input.is_empty() {
            return Err(missing_body());
        }
    }
    if retry.is_none() && is_bare_retry(input) {
        let bare: Ident = input.parse()?;
        return Err(syn::Error::new_spanned(
            bare,
            format!(
                "`retry` needs a policy: `step!({:?}, retry = RetryPolicy::no_retry(), <body>)`",
                name.value()
            ),
        ));
    }

    let body = parse_expr(input, lenient)?;
    if input.peek(Token![,]) {
        input.parse::<Token![,]>()?;
    }
    // `compensate = <closure>` may follow the body.
    if input.peek(syn::Ident) && !input.peek2(Token![==]) {
        let fork = input.fork();
        let option: Ident = fork.parse()?;
        if option == "compensate" {
            input.parse::<Ident>()?;
            if !input.peek(Token![=]) {
                return Err(syn::Error::new_spanned(
                    &option,
                    format!(
                        "`compensate` needs a closure: {}",
                        compensate_example(&name)
                    ),
                ));
            }
            let eq = input.parse::<Token![=]>()?;
            if compensate.is_some() {
                return Err(syn::Error::new_spanned(
                    &option,
                    "step option `compensate` is given twice",
                ));
            }
            let value = parse_expr(input, lenient)?;
            check_compensate(&name, &option, &eq, &value)?;
            compensate = Some(value);
            if input.peek(Token![,]) {
                input.parse::<Token![,]>()?;
            }
        }
    }
    if !input.is_empty() {
        let rest: TokenStream = input.parse()?;
        return Err(syn::Error::new_spanned(
            rest,
            "unexpected tokens after the step body; `step!` takes a name, an optional \
             `key = ..`, `retry = ..` and `timeout = ..`, one body expression, and an \
             optional `compensate = ..`",
        ));
    }
    Ok(SiteArgs {
        name,
        kind: KindArgs::Step {
            retry,
            key,
            timeout,
            body,
            compensate,
        },
    })
}

/// How to write a compensation, for messages.
fn compensate_example(name: &LitStr) -> String {
    format!(
        "`step!({:?}, <body>, compensate = |value| async move {{ undo(value).await }})`",
        name.value()
    )
}

/// Refuses a compensation that cannot be one: nothing, a literal, or a
/// closure that does not take exactly one argument (the step's value).
/// Any other expression (a fn's name) is checked by the compiler.
fn check_compensate(
    name: &LitStr,
    option: &Ident,
    eq: &Token![=],
    value: &TokenStream,
) -> syn::Result<()> {
    let example = compensate_example(name);
    if value.is_empty() {
        return Err(syn::Error::new_spanned(
            quote::quote!(#option #eq),
            format!("`compensate` needs a closure: {example}"),
        ));
    }
    match syn::parse2::<syn::Expr>(value.clone()) {
        Ok(syn::Expr::Lit(_)) => Err(syn::Error::new_spanned(
            value,
            format!("a compensation is a closure that gets the step's value: write {example}"),
        )),
        Ok(syn::Expr::Closure(closure)) if closure.inputs.len() != 1 => {
            let n = closure.inputs.len();
            let (or1, inputs, or2) = (&closure.or1_token, &closure.inputs, &closure.or2_token);
            Err(syn::Error::new_spanned(
                quote::quote!(#or1 #inputs #or2),
                format!(
                    "a compensation takes one argument, the step's value (this one takes {n}): \
                     write {example}"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Refuses a step timeout that cannot be a `Duration` and says how to
/// write one: a literal (`5`, `"30s"`, `1.5`). Any other expression is
/// checked by the compiler as a `Duration`.
fn check_step_timeout(
    name: &LitStr,
    option: &Ident,
    eq: &Token![=],
    value: &TokenStream,
) -> syn::Result<()> {
    let example = format!(
        "`step!({:?}, timeout = Duration::from_secs(30), <body>)`",
        name.value()
    );
    if let Ok(syn::Expr::Lit(lit)) = syn::parse2::<syn::Expr>(value.clone()) {
        let what = match &lit.lit {
            syn::Lit::Int(_) | syn::Lit::Float(_) => {
                "a number has no unit; a step timeout is a `std::time::Duration`"
            }
            syn::Lit::Str(_) => "a step timeout is a `std::time::Duration`, not a string",
            _ => "a step timeout is a `std::time::Duration`",
        };
        return Err(syn::Error::new_spanned(
            value,
            format!("{what}: write {example}"),
        ));
    }
    if value.is_empty() {
        return Err(syn::Error::new_spanned(
            quote::quote!(#option #eq),
            format!("`timeout` needs a duration: {example}"),
        ));
    }
    Ok(())
}

/// Parses `sleep!`'s arguments, `"name", <Duration> [,]`, or
/// `sleep_until!`'s, `"name", <SystemTime> [,]`.
fn parse_sleep(input: ParseStream, site: &Site, lenient: bool) -> syn::Result<SiteArgs> {
    let name = parse_name(input, site)?;
    let (what, ty) = match site.kind {
        SiteKind::SleepUntil => ("deadline", "SystemTime"),
        _ => ("duration", "Duration"),
    };
    let ident = site.kind.ident();
    let write = format!("`{ident}!({:?}, <{ty}>)`", name.value());
    let missing = || {
        syn::Error::new_spanned(
            site.tokens(),
            format!("sleep {:?} has no {what}; write {write}", name.value()),
        )
    };
    if input.is_empty() {
        return Err(missing());
    }
    if !input.peek(Token![,]) {
        return Err(input.error("expected `,` after the sleep name"));
    }
    input.parse::<Token![,]>()?;
    if input.is_empty() {
        return Err(missing());
    }
    if input.peek(syn::Ident) && input.peek2(Token![=]) && !input.peek2(Token![==]) {
        let key: Ident = input.parse()?;
        return Err(syn::Error::new_spanned(
            key,
            format!("`{ident}!` takes no options, only the {what} itself: {write}"),
        ));
    }
    let operand = parse_expr(input, lenient)?;
    if input.peek(Token![,]) {
        input.parse::<Token![,]>()?;
    }
    if !input.is_empty() {
        let rest: TokenStream = input.parse()?;
        return Err(syn::Error::new_spanned(
            rest,
            format!(
                "unexpected tokens after the {what}; `{ident}!` takes a name and one `{ty}` \
                 expression"
            ),
        ));
    }
    let kind = match site.kind {
        SiteKind::SleepUntil => KindArgs::SleepUntil { until: operand },
        _ => KindArgs::Sleep { duration: operand },
    };
    Ok(SiteArgs { name, kind })
}

/// Parses `wait_for!`'s arguments: `"name" [, timeout = <Duration>] [,]`.
fn parse_wait_for(input: ParseStream, site: &Site, lenient: bool) -> syn::Result<SiteArgs> {
    let name = parse_name(input, site)?;
    let with_timeout = || {
        format!(
            "`wait_for!({:?}, timeout = Duration::from_secs(3600))`",
            name.value()
        )
    };
    let mut timeout = None;
    if !input.is_empty() {
        if !input.peek(Token![,]) {
            return Err(input.error("expected `,` after the wait name"));
        }
        input.parse::<Token![,]>()?;
    }
    if !input.is_empty() {
        if input.peek(syn::Ident) && input.peek2(Token![=]) && !input.peek2(Token![==]) {
            let key: Ident = input.parse()?;
            if key != "timeout" {
                return Err(syn::Error::new_spanned(
                    &key,
                    format!(
                        "unknown `wait_for!` option `{key}`; the only option is \
                         `timeout = <Duration>`, e.g. {}",
                        with_timeout()
                    ),
                ));
            }
            let eq = input.parse::<Token![=]>()?;
            if input.is_empty() || input.peek(Token![,]) {
                return Err(syn::Error::new_spanned(
                    quote::quote!(#key #eq),
                    format!("`timeout` needs a duration: {}", with_timeout()),
                ));
            }
            timeout = Some(parse_expr(input, lenient)?);
        } else if is_bare(input, "timeout") {
            let key: Ident = input.parse()?;
            return Err(syn::Error::new_spanned(
                key,
                format!("`timeout` needs a duration: {}", with_timeout()),
            ));
        } else {
            let found = parse_expr(input, lenient)?;
            return Err(syn::Error::new_spanned(
                found,
                format!(
                    "`wait_for!` takes a timeout only as `timeout = <Duration>`: {}",
                    with_timeout()
                ),
            ));
        }
        if input.peek(Token![,]) {
            input.parse::<Token![,]>()?;
        }
        if !input.is_empty() {
            let rest: TokenStream = input.parse()?;
            return Err(syn::Error::new_spanned(
                rest,
                "unexpected tokens after the timeout; `wait_for!` takes a name and an optional \
                 `timeout = <Duration>`",
            ));
        }
    }
    Ok(SiteArgs {
        name,
        kind: KindArgs::WaitFor { timeout },
    })
}

/// Parses an expression, as its tokens. `lenient`: if it does not parse,
/// takes the tokens up to the next top-level comma instead.
fn parse_expr(input: ParseStream, lenient: bool) -> syn::Result<TokenStream> {
    if !lenient || input.fork().parse::<Expr>().is_ok() {
        return Ok(input.parse::<Expr>()?.into_token_stream());
    }
    input.step(|cursor| {
        let mut tokens = TokenStream::new();
        let mut rest = *cursor;
        while let Some((tree, next)) = rest.token_tree() {
            if matches!(&tree, TokenTree::Punct(punct) if punct.as_char() == ',') {
                break;
            }
            tokens.extend([tree]);
            rest = next;
        }
        if tokens.is_empty() {
            return Err(cursor.error("expected an expression"));
        }
        Ok((tokens, rest))
    })
}

/// Whether the input is `retry, <more>`: a `retry` option without its
/// value (a body that is just a variable called `retry` has no comma after).
fn is_bare_retry(input: ParseStream) -> bool {
    let fork = input.fork();
    fork.parse::<Ident>().is_ok_and(|key| key == "retry")
        && fork.parse::<Token![,]>().is_ok()
        && !fork.is_empty()
}

/// Parses `patched!`'s argument: `"name" [,]`.
fn parse_patched(input: ParseStream, site: &Site) -> syn::Result<SiteArgs> {
    let name = parse_name(input, site)?;
    if input.peek(Token![,]) {
        input.parse::<Token![,]>()?;
    }
    if !input.is_empty() {
        let rest: TokenStream = input.parse()?;
        return Err(syn::Error::new_spanned(
            rest,
            "`patched!` takes only the name of the change: `patched!(\"add-fraud-check\")`",
        ));
    }
    Ok(SiteArgs {
        name,
        kind: KindArgs::Patched,
    })
}

/// Whether the input is the option `key` alone, without `= value`: `key`,
/// then a comma or the end.
fn is_bare(input: ParseStream, key: &str) -> bool {
    let fork = input.fork();
    fork.parse::<Ident>().is_ok_and(|ident| ident == key)
        && (fork.is_empty() || fork.peek(Token![,]))
}

/// Parses a site's name, which must be a string literal.
fn parse_name(input: ParseStream, site: &Site) -> syn::Result<LitStr> {
    let usage = site.kind.usage();
    if input.is_empty() {
        let needs = match site.kind {
            SiteKind::Step => "a name and a body",
            SiteKind::Sleep => "a name and a duration",
            SiteKind::SleepUntil => "a name and a deadline",
            SiteKind::WaitFor => "the name of the event it waits for",
            SiteKind::Patched => "the name of the change",
        };
        return Err(syn::Error::new_spanned(
            site.tokens(),
            format!("{} needs {needs}: {usage}", site.kind.macro_name()),
        ));
    }
    if input.peek(LitStr) {
        return input.parse();
    }
    // Span the error over the whole offending expression where it parses.
    let found: TokenStream = match input.fork().parse::<Expr>() {
        Ok(_) => input.parse::<Expr>()?.into_token_stream(),
        Err(_) => input.parse::<TokenTree>()?.into_token_stream(),
    };
    Err(syn::Error::new_spanned(
        found,
        format!(
            "a {} name must be a string literal, e.g. {usage}: names are checked for \
             uniqueness at compile time and stored with each checkpoint",
            site.kind.noun()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn scan(body: TokenStream) -> (Body, Vec<String>) {
        let mut errors = Errors::default();
        let body = Body::scan(Group::new(Delimiter::Brace, body), &mut errors);
        (body, errors.messages())
    }

    fn names(body: &Body) -> Vec<String> {
        body.sites
            .iter()
            .map(|site| {
                site.name()
                    .map_or_else(|| "<error>".to_string(), LitStr::value)
            })
            .collect()
    }

    #[test]
    fn finds_steps_everywhere_in_source_order() {
        let (body, errors) = scan(quote! {
            let a = step!("a", f().await)?;
            for x in xs { step!("loop", g(x).await)?; }
            if a { step!("then", h().await)?; } else { match a { _ => step!("arm", h().await)? } }
            let (b, c) = tokio::join!(step!("join-1", f().await), step!("join-2", f().await));
            println!("{:?}", step!("print", f().await));
            let fut = async { step!("async-block", f().await) };
            let make = || async { step!("closure", f().await) };
            durable::step!("qualified", f().await)?;
            step!["brackets", f().await]?;
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            names(&body),
            [
                "a",
                "loop",
                "then",
                "arm",
                "join-1",
                "join-2",
                "print",
                "async-block",
                "closure",
                "qualified",
                "brackets"
            ]
        );
        assert!(body.is_expandable());
    }

    fn positions(body: &Body) -> Vec<(String, Position)> {
        body.sites
            .iter()
            .map(|site| (site.name().unwrap().value(), site.position))
            .collect()
    }

    /// Asserts the sites' names and positions, in source order.
    fn assert_positions(body: &Body, expected: &[(&str, Position)]) {
        let expected: Vec<(String, Position)> = expected
            .iter()
            .map(|(name, position)| (name.to_string(), *position))
            .collect();
        assert_eq!(positions(body), expected);
    }

    #[test]
    fn whole_join_and_select_arguments_are_futures() {
        use Position::{Future, Value};
        let (body, errors) = scan(quote! {
            let (a, b) = tokio::join!(step!("j1", f().await), durable::step!("j2", f().await));
            let c = futures::try_join!(::durable::step!("tj", f().await), other)?;
            let d = join!(biased; step!("biased", f().await));
            let e = tokio::join!(async { step!("in-async", f().await) }, step!("j3", f().await)?);
            tokio::select! {
                x = step!("s1", f().await) => { step!("handler", f().await)?; }
                y = step!("s2", f().await), if ready => {}
                z = async { step!("s3", f().await) } => {}
                else => { println!("{:?}", step!("else", f().await)); }
            }
            let v = vec![step!("vec", f().await)];
        });
        assert!(errors.is_empty(), "{errors:?}");
        let expected = [
            ("j1", Future),
            ("j2", Future),
            ("tj", Future),
            ("biased", Future),
            ("in-async", Value),
            ("j3", Value),
            ("s1", Future),
            ("handler", Value),
            ("s2", Future),
            ("s3", Value),
            ("else", Value),
            ("vec", Value),
        ];
        assert_positions(&body, &expected);
    }

    #[test]
    fn reads_retry_and_body() {
        let (body, errors) = scan(quote!(step!(
            "a",
            retry = RetryPolicy::no_retry(),
            f(1, 2).await,
        )));
        assert!(errors.is_empty(), "{errors:?}");
        let KindArgs::Step {
            retry, body: expr, ..
        } = &body.sites[0].args.as_ref().unwrap().kind
        else {
            panic!("not a step");
        };
        assert_eq!(
            retry.as_ref().unwrap().to_string(),
            "RetryPolicy :: no_retry ()"
        );
        assert_eq!(quote!(#expr).to_string(), "f (1 , 2) . await");
    }

    #[test]
    fn a_body_may_use_turbofish_commas_and_a_variable_called_retry() {
        let (_, errors) = scan(quote! {
            step!("a", Ok::<u32, String>(1))?;
            step!("b", retry)?;
            step!("b2", retry,)?;
            step!("c", retry == other)?;
        });
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn sites_in_nested_fns_are_recorded_but_not_expanded() {
        let (body, errors) = scan(quote! {
            fn helper() -> u32 { step!("inside-fn", f()) }
            impl Foo { pub(crate) async fn method(&self) { step!("inside-method", f()) } }
            #[durable::durable(name = "inner")]
            pub async fn inner(ctx: &Ctx, x: u32) -> u32 { step!("inner-workflow", f()) }
            let p: fn(u32) -> u32 = |x| x;
            let ok = step!("after", f().await);
            let m = $step!("x", y);
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(names(&body), ["inside-fn", "inside-method", "after"]);
        let nested: Vec<bool> = body.sites.iter().map(|site| site.in_nested_fn).collect();
        assert_eq!(nested, [true, true, false]);
        assert_eq!(body.declared().len(), 1);
        assert!(!body.is_expandable());
    }

    #[test]
    fn nested_steps_are_recorded_with_their_enclosing_step() {
        let (body, errors) = scan(quote!(step!(
            "outer",
            async { step!("inner", f().await) }.await
        )));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(names(&body), ["outer", "inner"]);
        assert_eq!(body.sites[1].enclosing, Some(0));
        assert!(!body.is_expandable());
        assert_eq!(body.declared().len(), 1);
    }

    #[test]
    fn malformed_sites_are_reported_each() {
        let (body, errors) = scan(quote! {
            step!(name_var, f().await)?;
            step!(123, f().await)?;
            step!("no-body");
            step!("no-body-2",);
            step!();
            step!("x", retry, f().await)?;
            step!("y", retri = no_retry(), f().await)?;
            step!("z", retry = no_retry())?;
            step!("w" f().await)?;
            step!("v", f().await, g().await)?;
        });
        assert_eq!(body.sites.len(), 10);
        assert!(body.sites.iter().all(|site| site.args.is_none()));
        assert_eq!(errors.len(), 10, "{errors:?}");
        assert!(errors[0].starts_with("a step name must be a string literal"));
        assert!(errors[1].starts_with("a step name must be a string literal"));
        assert!(errors[2].starts_with("step \"no-body\" has no body"));
        assert!(errors[3].starts_with("step \"no-body-2\" has no body"));
        assert!(errors[4].starts_with("`step!` needs a name and a body"));
        assert!(errors[5].starts_with("`retry` needs a policy"));
        assert!(errors[6].starts_with("unknown step option `retri`"));
        assert!(errors[7].starts_with("step \"z\" has no body"));
        assert_eq!(errors[8], "expected `,` after the step name");
        assert!(errors[9].starts_with("unexpected tokens after the step body"));
    }

    #[test]
    fn sites_in_macro_rules_may_hold_fragments() {
        let (body, errors) = scan(quote! {
            macro_rules! twice {
                ($x:expr, $p:expr) => { step!("in-macro", retry = $p, f($x * 2).await) };
            }
            step!("outside", f($x).await);
        });
        assert_eq!(body.sites.len(), 2);
        let KindArgs::Step {
            retry,
            body: tokens,
            ..
        } = &body.sites[0].args.as_ref().unwrap().kind
        else {
            panic!("not a step");
        };
        assert_eq!(retry.as_ref().unwrap().to_string(), "$ p");
        assert_eq!(tokens.to_string(), "f ($ x * 2) . await");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(body.sites[1].args.is_none());
    }

    /// Each site's kind and its arguments as text, or `<error>`.
    fn kinds(body: &Body) -> Vec<(SiteKind, String)> {
        body.sites
            .iter()
            .map(|site| {
                let args = site.args.as_ref().map_or_else(
                    || "<error>".to_string(),
                    |args| {
                        let rest = match &args.kind {
                            KindArgs::Step { body, .. } => body.to_string(),
                            KindArgs::Sleep { duration } => duration.to_string(),
                            KindArgs::SleepUntil { until } => until.to_string(),
                            KindArgs::WaitFor { timeout: None } | KindArgs::Patched => {
                                "-".to_string()
                            }
                            KindArgs::WaitFor { timeout: Some(t) } => format!("timeout {t}"),
                        };
                        format!("{} {rest}", args.name.value())
                    },
                );
                (site.kind, args)
            })
            .collect()
    }

    #[test]
    fn finds_sleeps_and_waits_among_steps_in_source_order() {
        use SiteKind::{Sleep, SleepUntil, Step, WaitFor};
        let (body, errors) = scan(quote! {
            step!("create-draft", f().await)?;
            let approval: Option<Approval> = wait_for!("approval", timeout = Duration::from_secs(3),);
            let payload: Approval = wait_for!("other-event");
            let trailing: u32 = wait_for!("trailing",);
            sleep!("cool-off", Duration::from_secs(86400));
            durable::sleep_until!("launch", SystemTime::now() + d,);
            for x in xs { sleep!["in-loop", d * x] }
            println!("{:?}", wait_for!{"in-print"});
            let x = sleep(d) + tokio::time::sleep(d).await + wait_for(1);
        });
        assert!(errors.is_empty(), "{errors:?}");
        let expected = [
            (Step, "create-draft f () . await"),
            (WaitFor, "approval timeout Duration :: from_secs (3)"),
            (WaitFor, "other-event -"),
            (WaitFor, "trailing -"),
            (Sleep, "cool-off Duration :: from_secs (86400)"),
            (SleepUntil, "launch SystemTime :: now () + d"),
            (Sleep, "in-loop d * x"),
            (WaitFor, "in-print -"),
        ];
        let expected: Vec<(SiteKind, String)> = expected
            .iter()
            .map(|(kind, args)| (*kind, args.to_string()))
            .collect();
        assert_eq!(kinds(&body), expected);
        assert!(body.is_expandable());
        assert_eq!(body.declared().len(), 8);
    }

    #[test]
    fn sleeps_and_waits_are_futures_where_steps_are() {
        use Position::{Future, Value};
        let (body, errors) = scan(quote! {
            let (a, b) = tokio::join!(wait_for!("j1"), sleep!("j2", d));
            tokio::select! {
                p = wait_for!("s1", timeout = d) => {}
                _ = durable::sleep_until!("s2", t), if ready => { sleep!("handler", d); }
            }
        });
        assert!(errors.is_empty(), "{errors:?}");
        let expected = [
            ("j1", Future),
            ("j2", Future),
            ("s1", Future),
            ("s2", Future),
            ("handler", Value),
        ];
        assert_positions(&body, &expected);
    }

    #[test]
    fn malformed_sleeps_and_waits_are_reported_each() {
        let (body, errors) = scan(quote! {
            sleep!("no-duration");
            sleep!("no-duration-2",);
            sleep!();
            sleep!(name, d);
            sleep!("opt", duration = d);
            sleep!("extra", d, e);
            sleep!("comma" d);
            sleep_until!("no-deadline");
            sleep_until!();
            wait_for!();
            wait_for!(name);
            wait_for!("typo", timout = d);
            wait_for!("bare", timeout);
            wait_for!("bare-2", timeout,);
            wait_for!("empty-timeout", timeout =);
            wait_for!("positional", Duration::from_secs(1));
            wait_for!("extra", timeout = d, e);
            wait_for!("comma" timeout = d);
        });
        assert_eq!(body.sites.len(), 18);
        assert!(body.sites.iter().all(|site| site.args.is_none()));
        let expected = [
            "sleep \"no-duration\" has no duration; write `sleep!(\"no-duration\", <Duration>)`",
            "sleep \"no-duration-2\" has no duration; write `sleep!(\"no-duration-2\", <Duration>)`",
            "`sleep!` needs a name and a duration: `sleep!(\"cool-off\", <Duration>)`",
            "a sleep name must be a string literal, e.g. `sleep!(\"cool-off\", <Duration>)`: names \
             are checked for uniqueness at compile time and stored with each checkpoint",
            "`sleep!` takes no options, only the duration itself: `sleep!(\"opt\", <Duration>)`",
            "unexpected tokens after the duration; `sleep!` takes a name and one `Duration` \
             expression",
            "expected `,` after the sleep name",
            "sleep \"no-deadline\" has no deadline; write `sleep_until!(\"no-deadline\", \
             <SystemTime>)`",
            "`sleep_until!` needs a name and a deadline: `sleep_until!(\"launch\", <SystemTime>)`",
            "`wait_for!` needs the name of the event it waits for: \
             `wait_for!(\"manager-approval\")`",
            "a wait name must be a string literal, e.g. `wait_for!(\"manager-approval\")`: names \
             are checked for uniqueness at compile time and stored with each checkpoint",
            "unknown `wait_for!` option `timout`; the only option is `timeout = <Duration>`, e.g. \
             `wait_for!(\"typo\", timeout = Duration::from_secs(3600))`",
            "`timeout` needs a duration: `wait_for!(\"bare\", timeout = \
             Duration::from_secs(3600))`",
            "`timeout` needs a duration: `wait_for!(\"bare-2\", timeout = \
             Duration::from_secs(3600))`",
            "`timeout` needs a duration: `wait_for!(\"empty-timeout\", timeout = \
             Duration::from_secs(3600))`",
            "`wait_for!` takes a timeout only as `timeout = <Duration>`: \
             `wait_for!(\"positional\", timeout = Duration::from_secs(3600))`",
            "unexpected tokens after the timeout; `wait_for!` takes a name and an optional \
             `timeout = <Duration>`",
            "expected `,` after the wait name",
        ];
        assert_eq!(errors, expected);
    }

    #[test]
    fn waits_in_macro_rules_may_hold_fragments() {
        let (body, errors) = scan(quote! {
            macro_rules! wait {
                ($t:expr) => { (wait_for!("in-macro", timeout = $t * 2), sleep!("s", $t)) };
            }
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            kinds(&body),
            [
                (SiteKind::WaitFor, "in-macro timeout $ t * 2".to_string()),
                (SiteKind::Sleep, "s $ t".to_string()),
            ]
        );
    }

    #[test]
    fn other_macros_and_bangs_are_not_sites() {
        let (body, errors) = scan(quote! {
            let steps = step != 3;
            macro_rules! step { () => {} }
            other!("a", b);
            let step = 1;
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert!(body.sites.is_empty());
    }
}
