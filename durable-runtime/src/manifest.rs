//! Manifests: what `#[durable]` knows about a workflow before any instance
//! runs, and the checks that keep a deploy from misreading an instance.
//!
//! A workflow's [`Manifest`] lists its sites (every `step!`, `sleep!` and
//! `wait_for!`) in source order, with the serde shape of each step's value
//! and error and of each wait's payload, plus the shapes of the workflow's
//! input and output. A shape is traced from the type's `Deserialize` impl
//! with `serde-reflection` once per type and process, rendered as text
//! (`{cents: u64, tax_cents: u64}`) and hashed with FNV-1a into a 64-bit
//! fingerprint. The text holds field names and types in order, enum
//! variants and their contents, but no Rust path and no container name:
//! moving a type to another module keeps its fingerprint; renaming a field,
//! reordering fields or changing `u64` to `i64` changes it.
//!
//! **Untraceable types.** Some types cannot be traced: their `Deserialize`
//! calls `deserialize_any` (`serde_json::Value`, untagged enums, flattened
//! structs) or validates what it reads (a UUID parsed from a string). Their
//! shape is `untraceable <type name>`, fingerprinted by
//! `std::any::type_name`: such a type is still compared, by its name (so
//! moving it to another module, or a compiler that names it differently,
//! counts as a change), and [`Manifest::untraceable`] lists the sites that
//! use one so a deploy gate can flag them. Never a silent pass.
//!
//! [`manifest_of`](crate::manifest_of) gives the manifest of a workflow value.
//!
//! Each instance stores the hash of the manifest it started with, each
//! checkpoint and event the fingerprint of the type it was written with.
//! Before an instance runs any body, `check_history` compares what it
//! recorded with the registered manifest; a checkpoint or event is decoded
//! only when its fingerprint matches the type asked for.

use std::any::TypeId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock, RwLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_reflection::{
    ContainerFormat, Format, Named, Registry, Samples, Tracer, TracerConfig, VariantFormat,
};

/// What kind of site a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SiteKind {
    /// A `step!`.
    Step,
    /// A `sleep!` or `sleep_until!`.
    Sleep,
    /// A `wait_for!`.
    Wait,
    /// A `patched!`: a planned change within one version.
    Patch,
}

impl SiteKind {
    /// `step`, `sleep` or `wait`, as messages and manifest files spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SiteKind::Step => "step",
            SiteKind::Sleep => "sleep",
            SiteKind::Wait => "wait",
            SiteKind::Patch => "patch",
        }
    }
}

impl std::fmt::Display for SiteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One site as the macro declares it: its name and kind, in source order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteDecl {
    /// The site's name (one namespace for all kinds).
    pub name: &'static str,
    /// Step, sleep, wait or patch.
    pub kind: SiteKind,
    /// The patch whose `if patched!(..) { .. }` block holds the site, if any.
    pub guard: Option<&'static str>,
}

/// The serde shape of a type: its text and the fingerprint of that text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    /// FNV-1a 64 of [`text`](Self::text).
    pub fingerprint: u64,
    /// Field names and types, enum variants: `{cents: u64, tax_cents: u64}`.
    pub text: String,
    /// `false` when the type could not be traced and is compared by its
    /// Rust type name instead (see the module docs).
    pub traced: bool,
}

impl Shape {
    fn new(text: String, traced: bool) -> Shape {
        Shape {
            fingerprint: fnv(text.as_bytes()),
            text,
            traced,
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The types one site reads and writes: a step's value and error, a wait's
/// payload (no error). Sleeps have none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteTypes {
    /// A step's `Ok` type, a wait's payload.
    pub value: Shape,
    /// A step's `Err` type.
    pub error: Option<Shape>,
}

impl SiteTypes {
    /// The fingerprint stored with a checkpoint or event of this site.
    pub fn fingerprint(&self) -> u64 {
        match &self.error {
            Some(error) => combine(self.value.fingerprint, error.fingerprint),
            None => self.value.fingerprint,
        }
    }
}

/// One site of a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// The site's name.
    pub name: String,
    /// Step, sleep or wait.
    pub kind: SiteKind,
    /// The types of steps and waits; `None` for sleeps and patches.
    pub types: Option<SiteTypes>,
    /// The patch whose `if patched!(..) { .. }` block holds the site, if any.
    pub guard: Option<String>,
}

/// What a workflow's code reads and writes, as `#[durable]` declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The workflow's stored name.
    pub workflow: String,
    /// The workflow's version.
    pub version: u32,
    /// The workflow's input shape.
    pub input: Shape,
    /// The workflow's output shape.
    pub output: Shape,
    /// Every site, in source order.
    pub sites: Vec<Site>,
    /// Whether the sites are known (the macro declared them). A workflow
    /// implemented by hand without `site_types` has sites without types.
    pub typed: bool,
}

impl Manifest {
    /// Builds the manifest of a workflow from its declared sites and the
    /// types of each (`types[i]` for `sites[i]`, `None` for sleeps; an empty
    /// `types` when the types are unknown).
    pub fn new(
        workflow: &str,
        version: u32,
        input: Shape,
        output: Shape,
        sites: &[SiteDecl],
        types: Vec<Option<SiteTypes>>,
    ) -> Manifest {
        let typed = types.len() == sites.len();
        let mut types = types.into_iter();
        let sites = sites
            .iter()
            .map(|decl| Site {
                name: decl.name.to_string(),
                kind: decl.kind,
                types: if typed { types.next().flatten() } else { None },
                guard: decl.guard.map(str::to_string),
            })
            .collect();
        Manifest {
            workflow: workflow.to_string(),
            version,
            input,
            output,
            sites,
            typed,
        }
    }

    /// The hash that identifies this version of the workflow: FNV-1a 64 of
    /// [`to_text`](Self::to_text).
    pub fn hash(&self) -> u64 {
        fnv(self.to_text().as_bytes())
    }

    /// The site named `name`, if any.
    pub fn site(&self, name: &str) -> Option<(usize, &Site)> {
        self.sites.iter().enumerate().find(|(_, s)| s.name == name)
    }

    /// The sites (and `input` / `output`) whose type could not be traced.
    pub fn untraceable(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.input.traced {
            out.push(format!("input: {}", self.input));
        }
        if !self.output.traced {
            out.push(format!("output: {}", self.output));
        }
        for site in &self.sites {
            if let Some(types) = &site.types {
                for shape in std::iter::once(&types.value).chain(types.error.as_ref()) {
                    if !shape.traced {
                        out.push(format!("{} `{}`: {}", site.kind, site.name, shape));
                    }
                }
            }
        }
        out
    }

    /// The manifest as stable, line-based text: what snapshot files hold
    /// and what [`hash`](Self::hash) hashes.
    ///
    /// ```text
    /// workflow onboard version 1
    /// input {user: str}
    /// output enum {Ok({team: str}), Err(str)}
    /// step charge: u64 / str
    /// sleep cool-off
    /// wait approval: {approved: bool}
    /// ```
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "workflow {} version {}", self.workflow, self.version);
        let _ = writeln!(out, "input {}", self.input);
        let _ = writeln!(out, "output {}", self.output);
        for site in &self.sites {
            let guard = site
                .guard
                .as_ref()
                .map_or_else(String::new, |p| format!(" [patch {p}]"));
            let _ = match &site.types {
                Some(SiteTypes {
                    value,
                    error: Some(error),
                }) => writeln!(
                    out,
                    "{} {}{guard}: {} / {}",
                    site.kind, site.name, value, error
                ),
                Some(SiteTypes { value, error: None }) => {
                    writeln!(out, "{} {}{guard}: {}", site.kind, site.name, value)
                }
                None => writeln!(out, "{} {}{guard}", site.kind, site.name),
            };
        }
        out
    }

    /// Reads one manifest written by [`to_text`](Self::to_text); `None` if
    /// the text is not one. (A site name containing `": "` or `" ["` does
    /// not read back.)
    pub fn from_text(text: &str) -> Option<Manifest> {
        let shape = |text: &str| {
            let traced = !text.starts_with("untraceable ");
            Shape::new(text.to_string(), traced)
        };
        let mut lines = text.lines();
        let head = lines.next()?.strip_prefix("workflow ")?;
        let (workflow, version) = head.rsplit_once(" version ")?;
        let input = shape(lines.next()?.strip_prefix("input ")?);
        let output = shape(lines.next()?.strip_prefix("output ")?);
        let mut sites = Vec::new();
        for line in lines {
            let (kind, rest) = line.split_once(' ')?;
            let kind = match kind {
                "step" => SiteKind::Step,
                "sleep" => SiteKind::Sleep,
                "wait" => SiteKind::Wait,
                "patch" => SiteKind::Patch,
                _ => return None,
            };
            let (head, types) = match rest.split_once(": ") {
                Some((head, types)) => (head, Some(types)),
                None => (rest, None),
            };
            let (name, guard) = match head.split_once(" [patch ") {
                Some((name, guard)) => (name, Some(guard.strip_suffix(']')?.to_string())),
                None => (head, None),
            };
            let types = types.map(|types| match (kind, types.split_once(" / ")) {
                (SiteKind::Step, Some((value, error))) => SiteTypes {
                    value: shape(value),
                    error: Some(shape(error)),
                },
                _ => SiteTypes {
                    value: shape(types),
                    error: None,
                },
            });
            sites.push(Site {
                name: name.to_string(),
                kind,
                types,
                guard,
            });
        }
        Some(Manifest {
            workflow: workflow.to_string(),
            version: version.parse().ok()?,
            input,
            output,
            sites,
            typed: true,
        })
    }

    /// What would strand an instance started on `older` if this manifest
    /// (the same workflow and version) replaced it: recorded sites that are
    /// gone or changed kind or type, a changed input, new sites (not
    /// guarded by a new patch) before sites such an instance may have
    /// passed. Empty when every in-flight instance of `older` can go on.
    pub fn strands(&self, older: &Manifest) -> Vec<String> {
        let mut problems = Vec::new();
        if older.input.fingerprint != self.input.fingerprint {
            problems.push(format!(
                "the input was written as `{}`, the code now reads `{}`",
                older.input, self.input
            ));
        }
        let mut last_old: Option<(usize, &str)> = None;
        for old in older.sites.iter().filter(|s| s.kind != SiteKind::Patch) {
            let Some((index, site)) = self.site(&old.name) else {
                problems.push(format!("{} `{}` is gone", old.kind, old.name));
                continue;
            };
            if last_old.is_none_or(|(i, _)| index > i) {
                last_old = Some((index, site.name.as_str()));
            }
            if site.kind != old.kind {
                problems.push(format!(
                    "{} `{}` is now a {} of that name",
                    old.kind, old.name, site.kind
                ));
            } else if let (Some(was), Some(now)) = (&old.types, &site.types)
                && was.fingerprint() != now.fingerprint()
            {
                problems.push(changed_types(old.kind, &old.name, Some(old), now));
            }
        }
        if let Some((last, last_name)) = last_old {
            for site in &self.sites[..last] {
                let skipped = site.kind == SiteKind::Patch
                    || site
                        .guard
                        .as_ref()
                        .is_some_and(|patch| older.site(patch).is_none());
                if !skipped && older.site(&site.name).is_none() {
                    problems.push(format!(
                        "{} `{}` is new and comes before `{last_name}`, which instances may \
                         already have passed; put it in `if patched!(\"..\") {{ .. }}` or in a \
                         new version",
                        site.kind, site.name
                    ));
                }
            }
        }
        problems
    }
}

/// FNV-1a, 64 bits: stable across builds, platforms and Rust versions
/// (unlike `DefaultHasher`).
pub(crate) fn fnv(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn combine(a: u64, b: u64) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_be_bytes());
    bytes[8..].copy_from_slice(&b.to_be_bytes());
    fnv(&bytes)
}

type Cache<V> = OnceLock<RwLock<HashMap<TypeId, Arc<V>>>>;

static SHAPES: Cache<Shape> = OnceLock::new();
static STEP_TYPES: Cache<SiteTypes> = OnceLock::new();

fn cached<V>(cache: &'static Cache<V>, id: TypeId, make: impl FnOnce() -> V) -> Arc<V> {
    let map = cache.get_or_init(|| RwLock::new(HashMap::new()));
    if let Some(v) = map.read().unwrap_or_else(|e| e.into_inner()).get(&id) {
        return Arc::clone(v);
    }
    let value = Arc::new(make());
    let mut map = map.write().unwrap_or_else(|e| e.into_inner());
    Arc::clone(map.entry(id).or_insert(value))
}

/// The shape of `T`, traced once per process.
pub fn shape_of<T: DeserializeOwned + 'static>() -> Arc<Shape> {
    cached(&SHAPES, TypeId::of::<T>(), trace::<T>)
}

/// The types of a step whose body returns `Result<T, E>`, once per process.
pub fn step_types<T: DeserializeOwned + 'static, E: DeserializeOwned + 'static>() -> Arc<SiteTypes>
{
    cached(&STEP_TYPES, TypeId::of::<Result<T, E>>(), || SiteTypes {
        value: (*shape_of::<T>()).clone(),
        error: Some((*shape_of::<E>()).clone()),
    })
}

/// The types of a wait whose payload is `T`.
pub fn wait_types<T: DeserializeOwned + 'static>() -> SiteTypes {
    SiteTypes {
        value: (*shape_of::<T>()).clone(),
        error: None,
    }
}

/// For the macro: what a site's phantom (`PhantomData<fn() -> (T, E)>` for
/// a step, `PhantomData<fn() -> T>` for a wait) says about its types.
///
/// The types come out through method resolution ("autoref
/// specialization"): [`TypesOfStep`] and [`TypesOfWait`] apply when the
/// types are serde types, [`TypesUnknown`] otherwise, so a site whose types
/// are wrong is reported once, at the site, by the call's own bounds.
#[doc(hidden)]
pub struct SiteProbe<X>(PhantomData<fn() -> X>);

/// For the macro: a step site's probe.
#[doc(hidden)]
pub fn step_probe<T, E>(_site: PhantomData<fn() -> (T, E)>) -> SiteProbe<(T, E)> {
    SiteProbe(PhantomData)
}

/// For the macro: a wait site's probe.
#[doc(hidden)]
pub fn wait_probe<T>(_site: PhantomData<fn() -> T>) -> SiteProbe<[T; 0]> {
    SiteProbe(PhantomData)
}

/// For the macro: the types of a step site.
#[doc(hidden)]
pub trait TypesOfStep {
    /// The site's types.
    fn site_types(&self) -> fn() -> Option<SiteTypes>;
}

impl<T: DeserializeOwned + 'static, E: DeserializeOwned + 'static> TypesOfStep
    for SiteProbe<(T, E)>
{
    fn site_types(&self) -> fn() -> Option<SiteTypes> {
        || Some((*step_types::<T, E>()).clone())
    }
}

/// For the macro: the types of a wait site.
#[doc(hidden)]
pub trait TypesOfWait {
    /// The site's types.
    fn site_types(&self) -> fn() -> Option<SiteTypes>;
}

impl<T: DeserializeOwned + 'static> TypesOfWait for SiteProbe<[T; 0]> {
    fn site_types(&self) -> fn() -> Option<SiteTypes> {
        || Some(wait_types::<T>())
    }
}

/// For the macro: a site whose types are not serde types (the site's own
/// call reports that) has none.
#[doc(hidden)]
pub trait TypesUnknown {
    /// No types.
    fn site_types(&self) -> fn() -> Option<SiteTypes> {
        || None
    }
}

impl<X> TypesUnknown for &SiteProbe<X> {}

/// For the macro: a sleep has no types.
#[doc(hidden)]
pub fn sleep_site_types() -> fn() -> Option<SiteTypes> {
    || None
}

/// Traces `T`'s `Deserialize`; falls back to its type name.
fn trace<T: DeserializeOwned>() -> Shape {
    match trace_format::<T>() {
        Some((format, registry)) => {
            let mut text = String::new();
            render(&format, &registry, &mut Vec::new(), &mut text);
            Shape::new(text, true)
        }
        None => Shape::new(format!("untraceable {}", std::any::type_name::<T>()), false),
    }
}

/// Traces until every enum reachable from `T` has all its variants; `None`
/// if the type cannot be traced.
fn trace_format<T: DeserializeOwned>() -> Option<(Format, Registry)> {
    let samples = Samples::new();
    let mut enums: HashSet<String> = HashSet::new();
    // Each round learns the names of enums still incomplete; the next
    // round clears their marks after every pass so each pass visits
    // another variant.
    for _round in 0..16 {
        let mut tracer = Tracer::new(TracerConfig::default());
        let mut top = None;
        for _pass in 0..4096 {
            let (format, _value) = tracer.trace_type_once::<T>(&samples).ok()?;
            let mut again = false;
            if let Format::TypeName(name) = &format
                && tracer.check_incomplete_enum(name).is_some()
            {
                again = true;
                enums.insert(name.clone());
            }
            for name in &enums {
                again |= tracer.check_incomplete_enum(name).is_some();
            }
            top = Some(format);
            if !again {
                break;
            }
        }
        match tracer.registry() {
            Ok(registry) => return Some((top?, registry)),
            Err(serde_reflection::Error::MissingVariants(names)) => {
                let before = enums.len();
                enums.extend(names);
                if enums.len() == before {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
    None
}

fn render(format: &Format, registry: &Registry, stack: &mut Vec<String>, out: &mut String) {
    match format {
        Format::Variable(_) => out.push('?'),
        Format::TypeName(name) => match registry.get(name) {
            Some(container) if !stack.contains(name) => {
                stack.push(name.clone());
                render_container(container, registry, stack, out);
                stack.pop();
            }
            // A recursive reference: the only place a name appears.
            Some(_) => {
                let _ = write!(out, "rec {name}");
            }
            None => {
                let _ = write!(out, "unknown {name}");
            }
        },
        Format::Unit => out.push_str("()"),
        Format::Bool => out.push_str("bool"),
        Format::I8 => out.push_str("i8"),
        Format::I16 => out.push_str("i16"),
        Format::I32 => out.push_str("i32"),
        Format::I64 => out.push_str("i64"),
        Format::I128 => out.push_str("i128"),
        Format::U8 => out.push_str("u8"),
        Format::U16 => out.push_str("u16"),
        Format::U32 => out.push_str("u32"),
        Format::U64 => out.push_str("u64"),
        Format::U128 => out.push_str("u128"),
        Format::F32 => out.push_str("f32"),
        Format::F64 => out.push_str("f64"),
        Format::Char => out.push_str("char"),
        Format::Str => out.push_str("str"),
        Format::Bytes => out.push_str("bytes"),
        Format::Option(inner) => {
            out.push_str("Option<");
            render(inner, registry, stack, out);
            out.push('>');
        }
        Format::Seq(inner) => {
            out.push('[');
            render(inner, registry, stack, out);
            out.push(']');
        }
        Format::Map { key, value } => {
            out.push_str("Map<");
            render(key, registry, stack, out);
            out.push_str(", ");
            render(value, registry, stack, out);
            out.push('>');
        }
        Format::Tuple(items) => render_tuple(items, registry, stack, out),
        Format::TupleArray { content, size } => {
            out.push('[');
            render(content, registry, stack, out);
            let _ = write!(out, "; {size}]");
        }
    }
}

fn render_tuple(items: &[Format], registry: &Registry, stack: &mut Vec<String>, out: &mut String) {
    out.push('(');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        render(item, registry, stack, out);
    }
    out.push(')');
}

fn render_fields(
    fields: &[Named<Format>],
    registry: &Registry,
    stack: &mut Vec<String>,
    out: &mut String,
) {
    out.push('{');
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{}: ", field.name);
        render(&field.value, registry, stack, out);
    }
    out.push('}');
}

fn render_container(
    container: &ContainerFormat,
    registry: &Registry,
    stack: &mut Vec<String>,
    out: &mut String,
) {
    match container {
        ContainerFormat::UnitStruct => out.push_str("unit"),
        ContainerFormat::NewTypeStruct(inner) => {
            out.push_str("newtype(");
            render(inner, registry, stack, out);
            out.push(')');
        }
        ContainerFormat::TupleStruct(items) => render_tuple(items, registry, stack, out),
        ContainerFormat::Struct(fields) => render_fields(fields, registry, stack, out),
        ContainerFormat::Enum(variants) => render_enum(variants, registry, stack, out),
    }
}

fn render_enum(
    variants: &BTreeMap<u32, Named<VariantFormat>>,
    registry: &Registry,
    stack: &mut Vec<String>,
    out: &mut String,
) {
    out.push_str("enum {");
    for (i, variant) in variants.values().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&variant.name);
        match &variant.value {
            VariantFormat::Variable(_) => out.push_str("(?)"),
            VariantFormat::Unit => {}
            VariantFormat::NewType(inner) => {
                out.push('(');
                render(inner, registry, stack, out);
                out.push(')');
            }
            VariantFormat::Tuple(items) => render_tuple(items, registry, stack, out),
            VariantFormat::Struct(fields) => {
                out.push(' ');
                render_fields(fields, registry, stack, out);
            }
        }
    }
    out.push('}');
}

/// What [`check_snapshot`] may do to the snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    /// Only compare: a new or changed manifest is an error.
    Check,
    /// Record new manifests and compatible changes; an incompatible change
    /// is still an error.
    Update,
    /// Record everything, incompatible changes too (when no instance of
    /// the old code can be in flight any more).
    Force,
}

/// Compares `manifests` with the snapshot file at `path` (one block per
/// workflow version, as [`Manifest::to_text`] writes them, kept in the
/// user's repository) and, per `mode`, records them.
///
/// Errors name each manifest that is new or changed and, for a change,
/// whether it would strand in-flight instances of that version (see
/// [`Manifest::strands`]) and what to do: bump the version and keep the old
/// one registered, or guard new steps with `patched!`.
pub fn check_snapshot(
    path: impl AsRef<std::path::Path>,
    manifests: &[Manifest],
    mode: SnapshotMode,
) -> Result<(), String> {
    let path = path.as_ref();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut stored: Vec<Manifest> = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        stored.push(
            Manifest::from_text(block.trim_matches('\n')).ok_or_else(|| {
                format!(
                    "{} holds a block that is not a manifest:\n{block}",
                    path.display()
                )
            })?,
        );
    }
    let mut problems = Vec::new();
    let mut changed = false;
    for manifest in manifests {
        let id = format!("{} version {}", manifest.workflow, manifest.version);
        let slot = stored
            .iter_mut()
            .find(|m| m.workflow == manifest.workflow && m.version == manifest.version);
        match slot {
            None if mode == SnapshotMode::Check => problems.push(format!(
                "{id} is not in the snapshot yet; record it with DURABLE_MANIFESTS=update"
            )),
            None => {
                stored.push(manifest.clone());
                changed = true;
            }
            Some(old) if old.to_text() == manifest.to_text() => {}
            Some(old) => {
                let strands = manifest.strands(old);
                if !strands.is_empty() && mode != SnapshotMode::Force {
                    problems.push(format!(
                        "{id} changed in a way that strands its in-flight instances: {}. Give \
                         the new code `#[durable(version = {})]` and keep this version \
                         registered until its instances finish, or guard new steps with \
                         `patched!`; if no instance of it can be in flight, record it with \
                         DURABLE_MANIFESTS=force",
                        strands.join("; "),
                        manifest.version + 1
                    ));
                } else if mode == SnapshotMode::Check {
                    problems.push(format!(
                        "{id} changed compatibly (in-flight instances can go on); record it \
                         with DURABLE_MANIFESTS=update"
                    ));
                } else {
                    *old = manifest.clone();
                    changed = true;
                }
            }
        }
    }
    if changed && problems.is_empty() {
        stored.sort_by(|a, b| (&a.workflow, a.version).cmp(&(&b.workflow, b.version)));
        let text: Vec<String> = stored.iter().map(Manifest::to_text).collect();
        std::fs::write(path, text.join("\n"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "workflow manifests differ from {}:\n- {}",
            path.display(),
            problems.join("\n- ")
        ))
    }
}

/// [`check_snapshot`] for a test: the mode comes from the environment
/// variable `DURABLE_MANIFESTS` (`update`, `force`; unset: check), and a
/// difference panics with the message.
///
/// ```no_run
/// # use durable_runtime::manifest::{assert_snapshot, Manifest};
/// # fn manifests() -> Vec<Manifest> { Vec::new() }
/// // tests/manifests.rs
/// #[test]
/// fn workflow_manifests_are_compatible() {
///     assert_snapshot("tests/manifests.txt", &manifests());
/// }
/// ```
#[track_caller]
pub fn assert_snapshot(path: impl AsRef<std::path::Path>, manifests: &[Manifest]) {
    let mode = match std::env::var("DURABLE_MANIFESTS").as_deref() {
        Ok("update") => SnapshotMode::Update,
        Ok("force") => SnapshotMode::Force,
        _ => SnapshotMode::Check,
    };
    if let Err(message) = check_snapshot(path, manifests, mode) {
        panic!("{message}");
    }
}

/// The key of a manifest in the store's `Meta` tree.
pub(crate) fn manifest_key(hash: u64) -> Vec<u8> {
    let mut key = b"manifest/".to_vec();
    key.extend_from_slice(&hash.to_be_bytes());
    key
}

/// What an instance recorded, as the compatibility check reads it.
pub(crate) struct Recorded<'a> {
    /// Its checkpoints.
    pub checkpoints: &'a [crate::records::CheckpointRecord],
    /// Events sent to it, by name, with the fingerprint and shape each was
    /// sent as.
    pub events: Vec<(String, u64, String)>,
}

/// Checks an instance's recorded history against `current`, the manifest
/// of the code about to run it; `started` is the manifest it started with,
/// if the store still has it. Returns every problem found, in words.
///
/// Every recorded site that the code declared (a `step!`, `sleep!` or
/// `wait_for!`, not a `Ctx::step` from a helper) must still exist with the
/// same kind and types; every stored event sent to a wait must still fit
/// that wait; and no site that the started manifest lacked may come before
/// a site the instance already recorded (it would run out of order; add
/// it with a new version instead).
pub(crate) fn check_history(
    current: &Manifest,
    started: Option<&Manifest>,
    recorded: &Recorded<'_>,
) -> Result<(), String> {
    use crate::records::CheckpointState as S;
    let mut problems: Vec<String> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut last_recorded: Option<(usize, &str)> = None;
    let old_site = |name: &str| started.and_then(|m| m.site(name)).map(|(_, s)| s);
    // In the order the instance reached them.
    let mut checkpoints: Vec<&crate::records::CheckpointRecord> =
        recorded.checkpoints.iter().collect();
    checkpoints.sort_by_key(|c| c.seq);
    for record in checkpoints {
        let name = record.name.as_str();
        if !record.declared && old_site(name).is_none() {
            continue;
        }
        let kind = match record.state {
            S::Retrying { .. }
            | S::Done { .. }
            | S::Panicked { .. }
            | S::TooLarge { .. }
            | S::Expired { .. } => SiteKind::Step,
            S::Sleeping { .. } => SiteKind::Sleep,
            S::Waiting { .. } | S::Received { .. } | S::TimedOut { .. } => SiteKind::Wait,
        };
        if !seen.insert(name) {
            continue;
        }
        let Some((index, site)) = current.site(name) else {
            problems.push(format!("{kind} `{name}` is gone"));
            continue;
        };
        if last_recorded.is_none_or(|(i, _)| index > i) {
            last_recorded = Some((index, site.name.as_str()));
        }
        if site.kind != kind {
            problems.push(format!(
                "{kind} `{name}` is now a {} of that name",
                site.kind
            ));
            continue;
        }
        let stored = match &record.state {
            S::Done { fingerprint, .. } | S::Received { fingerprint, .. } => Some(*fingerprint),
            _ => None,
        };
        if let (Some(stored), Some(types)) = (stored, &site.types)
            && stored != types.fingerprint()
        {
            problems.push(changed_types(kind, name, old_site(name), types));
        }
    }
    for (name, fingerprint, shape) in &recorded.events {
        if let Some((_, site)) = current.site(name)
            && site.kind == SiteKind::Wait
            && let Some(types) = &site.types
            && *fingerprint != types.value.fingerprint
        {
            problems.push(format!(
                "event `{name}` was sent as `{shape}`, the code now reads `{}`",
                types.value
            ));
        }
    }
    if let (Some(started), Some((last, last_name))) = (started, last_recorded) {
        for site in &current.sites[..last] {
            // A patch, and what a patch new to this instance guards, are
            // skipped by it: `patched!` is `false` for older instances.
            let skipped = site.kind == SiteKind::Patch
                || site
                    .guard
                    .as_ref()
                    .is_some_and(|patch| started.site(patch).is_none());
            if !skipped
                && started.site(&site.name).is_none()
                && !recorded.checkpoints.iter().any(|c| c.name == site.name)
            {
                problems.push(format!(
                    "{} `{}` is new and comes before `{last_name}`, which this instance already reached; \
                     put it in `if patched!(\"..\") {{ .. }}` or in a new version",
                    site.kind, site.name
                ));
            }
        }
    }
    if let Some(started) = started
        && started.input.fingerprint != current.input.fingerprint
    {
        problems.push(format!(
            "the input was written as `{}`, the code now reads `{}`",
            started.input, current.input
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// "step `price` was written as `{..}`, the code now reads `{..}`".
fn changed_types(kind: SiteKind, name: &str, old: Option<&Site>, now: &SiteTypes) -> String {
    match old.and_then(|s| s.types.as_ref()) {
        Some(old) if old.value != now.value || old.error.is_none() => format!(
            "{kind} `{name}` was written as `{}`, the code now reads `{}`",
            old.value, now.value
        ),
        Some(old) => format!(
            "{kind} `{name}`'s error was written as `{}`, the code now reads `{}`",
            old.error.as_ref().map_or("", |e| e.text.as_str()),
            now.error.as_ref().map_or("", |e| e.text.as_str())
        ),
        None => format!(
            "{kind} `{name}` was written with other types, the code now reads `{}`",
            now.value
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod a {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub(super) struct Price {
            pub(super) cents: u64,
            pub(super) tax_cents: u64,
        }
    }
    mod b {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub(super) struct Price {
            pub(super) cents: u64,
            pub(super) tax_cents: u64,
        }
        #[derive(serde::Serialize, serde::Deserialize)]
        pub(super) struct Reordered {
            pub(super) tax_cents: u64,
            pub(super) cents: u64,
        }
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    enum Inner {
        A,
        B(u32),
        C { x: String },
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Outer {
        inner: Inner,
        more: Vec<Option<Inner>>,
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    enum Tree {
        Leaf(u8),
        Node(Box<Tree>, Box<Tree>),
    }

    #[test]
    fn shapes_ignore_the_path_and_see_fields() {
        let a = shape_of::<a::Price>();
        assert_eq!(a.text, "{cents: u64, tax_cents: u64}");
        assert!(a.traced);
        assert_eq!(a.fingerprint, shape_of::<b::Price>().fingerprint);
        let r = shape_of::<b::Reordered>();
        assert_eq!(r.text, "{tax_cents: u64, cents: u64}");
        assert_ne!(a.fingerprint, r.fingerprint);
        assert_ne!(shape_of::<u64>().fingerprint, shape_of::<i64>().fingerprint);
    }

    #[test]
    fn nested_enums_are_complete() {
        assert_eq!(
            shape_of::<Outer>().text,
            "{inner: enum {A, B(u32), C {x: str}}, more: [Option<enum {A, B(u32), C {x: str}}>]}"
        );
        assert_eq!(
            shape_of::<Result<u32, String>>().text,
            "enum {Ok(u32), Err(str)}"
        );
        assert_eq!(
            shape_of::<Tree>().text,
            "enum {Leaf(u8), Node(rec Tree, rec Tree)}"
        );
    }

    #[test]
    fn untraceable_types_fall_back_to_their_name() {
        struct Any;
        impl<'de> Deserialize<'de> for Any {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(serde::de::IgnoredAny)?;
                Ok(Any)
            }
        }
        let s = shape_of::<Any>();
        assert!(!s.traced);
        assert!(s.text.starts_with("untraceable "), "{}", s.text);
        assert!(s.text.contains("Any"));
    }

    fn manifest(sites: &[(&'static str, SiteKind, Option<&'static str>)]) -> Manifest {
        let decls: Vec<SiteDecl> = sites
            .iter()
            .map(|(name, kind, guard)| SiteDecl {
                name,
                kind: *kind,
                guard: *guard,
            })
            .collect();
        let types = sites
            .iter()
            .map(|(_, kind, _)| match kind {
                SiteKind::Step => Some((*step_types::<u64, String>()).clone()),
                SiteKind::Wait => Some(wait_types::<a::Price>()),
                _ => None,
            })
            .collect();
        Manifest::new(
            "wf",
            1,
            (*shape_of::<String>()).clone(),
            (*shape_of::<u32>()).clone(),
            &decls,
            types,
        )
    }

    #[test]
    fn manifests_read_back_from_their_text() {
        let m = manifest(&[
            ("a", SiteKind::Step, None),
            ("p", SiteKind::Patch, None),
            ("b", SiteKind::Step, Some("p")),
            ("nap", SiteKind::Sleep, None),
            ("approval", SiteKind::Wait, None),
        ]);
        let text = m.to_text();
        assert_eq!(
            text,
            "workflow wf version 1\ninput str\noutput u32\nstep a: u64 / str\npatch p\n\
             step b [patch p]: u64 / str\nsleep nap\nwait approval: {cents: u64, tax_cents: u64}\n"
        );
        let back = Manifest::from_text(&text).unwrap();
        assert_eq!(back.to_text(), text);
        assert_eq!(back.hash(), m.hash());
        assert!(Manifest::from_text("not a manifest").is_none());
    }

    #[test]
    fn strands_names_what_in_flight_instances_cannot_survive() {
        let old = manifest(&[("a", SiteKind::Step, None), ("b", SiteKind::Step, None)]);
        // Appending is fine; so is a new step guarded by a new patch.
        let appended = manifest(&[
            ("a", SiteKind::Step, None),
            ("b", SiteKind::Step, None),
            ("c", SiteKind::Step, None),
        ]);
        assert!(appended.strands(&old).is_empty());
        let patched = manifest(&[
            ("a", SiteKind::Step, None),
            ("p", SiteKind::Patch, None),
            ("x", SiteKind::Step, Some("p")),
            ("b", SiteKind::Step, None),
        ]);
        assert!(patched.strands(&old).is_empty());
        let inserted = manifest(&[
            ("a", SiteKind::Step, None),
            ("x", SiteKind::Step, None),
            ("b", SiteKind::Step, None),
        ]);
        assert_eq!(
            inserted.strands(&old),
            [
                "step `x` is new and comes before `b`, which instances may already have passed; \
              put it in `if patched!(\"..\") { .. }` or in a new version"
            ]
        );
        let renamed = manifest(&[("a", SiteKind::Step, None), ("c", SiteKind::Sleep, None)]);
        assert_eq!(renamed.strands(&old), ["step `b` is gone"]);
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
