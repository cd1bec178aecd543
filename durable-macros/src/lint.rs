//! Determinism warnings: calls in the workflow body, outside step bodies,
//! to well-known non-deterministic APIs, and loops over a `HashMap` /
//! `HashSet` whose steps are numbered by position.
//!
//! Code between steps runs again on every replay, so what it computes must
//! come out the same each time. The scan is by tokens (the macro sees no
//! types): it looks for the paths below and for `for .. in` loops over a
//! collection whose `let` or parameter mentions `HashMap` / `HashSet`. Each
//! finding becomes a real compiler warning at the user's token (through a
//! `#[deprecated]` item, the only warning a proc macro can raise on stable
//! Rust); `#[durable(allow = "nondeterminism")]` silences them for one fn.

use proc_macro2::{Delimiter, Ident, Span, TokenStream, TokenTree};
use quote::quote_spanned;

use crate::sites::{Body, KindArgs, Node, SiteKind};

/// One finding: where, and what to say.
pub(crate) struct Finding {
    /// The offending token.
    pub span: Span,
    /// The warning's text.
    pub message: String,
}

/// A call pattern: a path's segments and the advice.
const CALLS: &[(&[&str], &str)] = &[
    (
        &["SystemTime", "now"],
        "`SystemTime::now()` between steps returns another time on every replay; use `ctx.now().await` (checkpointed) or read the time inside a step",
    ),
    (
        &["Instant", "now"],
        "`Instant::now()` between steps differs on every replay; measure inside a step, or use `ctx.now().await`",
    ),
    (
        &["thread_rng"],
        "`thread_rng()` between steps draws other numbers on every replay; use `ctx.random().await` (checkpointed) or draw inside a step",
    ),
    (
        &["rand", "*"],
        "`rand::..` between steps draws other numbers on every replay; use `ctx.random().await` (checkpointed) or draw inside a step",
    ),
    (
        &["env", "var"],
        "`std::env::var` between steps can read another value after a restart; pass configuration in the input, or read it inside a step",
    ),
    (
        &["env", "var_os"],
        "`std::env::var_os` between steps can read another value after a restart; pass configuration in the input, or read it inside a step",
    ),
    (
        &["time", "sleep"],
        "`tokio::time::sleep` in a workflow is not durable (a restart forgets it); use `sleep!(\"name\", duration)`",
    ),
    (
        &["Uuid", "new_v4"],
        "`Uuid::new_v4()` between steps makes another id on every replay; use `ctx.uuid().await` (checkpointed) or make it inside a step",
    ),
];

/// Every finding in the body, outside step bodies, in source order.
pub(crate) fn scan(body: &Body, input: Option<&TokenStream>) -> Vec<Finding> {
    let mut hashed: Vec<String> = Vec::new();
    if let Some(input) = input {
        collect_hashed_params(input, &mut hashed);
    }
    collect_hashed_lets(&body.nodes, &mut hashed);
    let mut out = Vec::new();
    walk(body, &body.nodes, &hashed, &mut out);
    out
}

/// The warnings as code: one `#[deprecated]` item per finding, used at the
/// finding's token.
pub(crate) fn warnings(findings: &[Finding]) -> TokenStream {
    let mut out = TokenStream::new();
    for finding in findings {
        // One block per finding, so one name serves them all.
        let item = Ident::new("non_deterministic_in_workflow", Span::mixed_site());
        let used = Ident::new(
            "non_deterministic_in_workflow",
            Span::mixed_site().located_at(finding.span),
        );
        let note = &finding.message;
        out.extend(quote_spanned! {finding.span=>
            {
                #[allow(non_camel_case_types)]
                #[deprecated(note = #note)]
                struct #item;
                let _ = #used;
            }
        });
    }
    out
}

/// The tokens of one level of the body: trees, with groups that hold sites
/// kept as nodes.
enum Tok<'a> {
    Tree(&'a TokenTree),
    Group(&'a proc_macro2::Group, &'a [Node]),
    Site,
}

fn level(nodes: &[Node]) -> Vec<Tok<'_>> {
    nodes
        .iter()
        .map(|n| match n {
            Node::Tree(t) => Tok::Tree(t),
            Node::Group { group, nodes } => Tok::Group(group, nodes),
            Node::Site(_) => Tok::Site,
        })
        .collect()
}

fn ident_of<'a>(tok: &Tok<'a>) -> Option<&'a Ident> {
    match tok {
        Tok::Tree(TokenTree::Ident(i)) => Some(i),
        _ => None,
    }
}

fn is_path_sep(toks: &[Tok<'_>], i: usize) -> bool {
    matches!(
        (toks.get(i), toks.get(i + 1)),
        (Some(Tok::Tree(TokenTree::Punct(a))), Some(Tok::Tree(TokenTree::Punct(b))))
            if a.as_char() == ':' && b.as_char() == ':'
    )
}

fn walk(body: &Body, nodes: &[Node], hashed: &[String], out: &mut Vec<Finding>) {
    let toks = level(nodes);
    for i in 0..toks.len() {
        if let Some(first) = ident_of(&toks[i]) {
            for (path, message) in CALLS {
                if matches_path(&toks, i, path) {
                    out.push(Finding {
                        span: first.span(),
                        message: (*message).to_string(),
                    });
                }
            }
            if first == "for"
                && let Some(finding) = hashed_loop(body, &toks, i, hashed)
            {
                out.push(finding);
            }
        }
        match &toks[i] {
            Tok::Group(_, inner) => walk(body, inner, hashed, out),
            Tok::Tree(TokenTree::Group(group)) => walk_plain(group.stream(), out),
            _ => {}
        }
    }
}

/// The same call patterns in a group without sites.
fn walk_plain(stream: TokenStream, out: &mut Vec<Finding>) {
    let trees: Vec<TokenTree> = stream.into_iter().collect();
    let nodes: Vec<Node> = trees.iter().cloned().map(Node::Tree).collect();
    let toks = level(&nodes);
    for i in 0..toks.len() {
        if let Some(first) = ident_of(&toks[i]) {
            for (path, message) in CALLS {
                if matches_path(&toks, i, path) {
                    out.push(Finding {
                        span: first.span(),
                        message: (*message).to_string(),
                    });
                }
            }
        }
        if let TokenTree::Group(group) = &trees[i] {
            walk_plain(group.stream(), out);
        }
    }
}

/// Whether `path` (segments joined by `::`) starts at `toks[i]`.
fn matches_path(toks: &[Tok<'_>], i: usize, path: &[&str]) -> bool {
    let mut at = i;
    for (n, segment) in path.iter().enumerate() {
        if n > 0 {
            if !is_path_sep(toks, at) {
                return false;
            }
            at += 2;
        }
        match toks.get(at).and_then(ident_of) {
            Some(ident) if *segment == "*" || ident == segment => at += 1,
            _ => return false,
        }
    }
    // A one-segment pattern (`thread_rng`) only where it starts a path, so
    // that `rand::thread_rng` is reported once (as `rand::..`).
    if path.len() == 1 && i >= 2 && is_path_sep(toks, i - 2) {
        return false;
    }
    // `time::sleep` only as `tokio::time::sleep`.
    if path == ["time", "sleep"] {
        return i >= 3
            && is_path_sep(toks, i - 2)
            && toks
                .get(i - 3)
                .and_then(ident_of)
                .is_some_and(|t| t == "tokio");
    }
    true
}

/// `for PAT in EXPR { .. step!(..) .. }` over a hashed collection, with an
/// unkeyed step inside: a finding at `for`.
fn hashed_loop(body: &Body, toks: &[Tok<'_>], i: usize, hashed: &[String]) -> Option<Finding> {
    let for_span = ident_of(&toks[i])?.span();
    let in_at = (i + 1..toks.len()).find(|&j| ident_of(&toks[j]).is_some_and(|t| t == "in"))?;
    let (body_at, inner) = (in_at + 1..toks.len()).find_map(|j| match &toks[j] {
        Tok::Group(g, inner) if g.delimiter() == Delimiter::Brace => Some((j, *inner)),
        _ => None,
    })?;
    let mut expr_idents = Vec::new();
    for tok in &toks[in_at + 1..body_at] {
        match tok {
            Tok::Tree(TokenTree::Ident(ident)) => expr_idents.push(ident.to_string()),
            Tok::Tree(TokenTree::Group(g)) => {
                for tree in g.stream() {
                    if let TokenTree::Ident(ident) = tree {
                        expr_idents.push(ident.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    let over_hash = expr_idents
        .iter()
        .any(|t| t == "HashMap" || t == "HashSet" || hashed.contains(t));
    if !over_hash {
        return None;
    }
    let step = unkeyed_step(body, inner)?;
    Some(Finding {
        span: for_span,
        message: format!(
            "this loop iterates a HashMap/HashSet, whose order differs between runs, and its `step!({step:?}, ..)` is matched by position on replay; give the step a key (`step!({step:?}, key = item.clone(), ..)`) or iterate a BTreeMap/BTreeSet or a sorted Vec"
        ),
    })
}

/// The name of the first step without a key in `nodes`.
fn unkeyed_step(body: &Body, nodes: &[Node]) -> Option<String> {
    for node in nodes {
        match node {
            Node::Site(i) => {
                let site = &body.sites[*i];
                if site.kind == SiteKind::Step
                    && let Some(args) = &site.args
                    && let KindArgs::Step { key: None, .. } = &args.kind
                {
                    return Some(args.name.value());
                }
            }
            Node::Group { nodes, .. } => {
                if let Some(name) = unkeyed_step(body, nodes) {
                    return Some(name);
                }
            }
            Node::Tree(_) => {}
        }
    }
    None
}

/// Names bound by `let` statements that mention `HashMap` / `HashSet`.
fn collect_hashed_lets(nodes: &[Node], out: &mut Vec<String>) {
    let toks = level(nodes);
    let mut i = 0;
    while i < toks.len() {
        if ident_of(&toks[i]).is_some_and(|t| t == "let") {
            let mut j = i + 1;
            if ident_of(&toks[j.min(toks.len() - 1)]).is_some_and(|t| t == "mut") {
                j += 1;
            }
            let name = toks.get(j).and_then(ident_of).map(Ident::to_string);
            let mut hashed = false;
            let mut k = j;
            while k < toks.len() {
                match &toks[k] {
                    Tok::Tree(TokenTree::Punct(p)) if p.as_char() == ';' => break,
                    Tok::Tree(TokenTree::Ident(t)) if t == "HashMap" || t == "HashSet" => {
                        hashed = true;
                    }
                    Tok::Tree(TokenTree::Group(g)) => {
                        hashed |= mentions_hash(g.stream());
                    }
                    _ => {}
                }
                k += 1;
            }
            if hashed && let Some(name) = name {
                out.push(name);
            }
            i = k;
        }
        if let Some(Tok::Group(_, inner)) = toks.get(i) {
            collect_hashed_lets(inner, out);
        }
        i += 1;
    }
}

fn mentions_hash(stream: TokenStream) -> bool {
    stream.into_iter().any(|t| match t {
        TokenTree::Ident(i) => i == "HashMap" || i == "HashSet",
        TokenTree::Group(g) => mentions_hash(g.stream()),
        _ => false,
    })
}

/// The input's binding name if its type mentions `HashMap` / `HashSet`
/// (`perms: HashSet<String>` as the input).
fn collect_hashed_params(input: &TokenStream, out: &mut Vec<String>) {
    let trees: Vec<TokenTree> = input.clone().into_iter().collect();
    if let Some(TokenTree::Ident(name)) = trees.first()
        && mentions_hash(input.clone())
    {
        out.push(name.to_string());
    }
}
