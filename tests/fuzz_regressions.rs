//! The fuzz targets of `sseplane::fuzz_targets` on stable: every reproducer
//! kept in `fuzz/regressions/<target>/` and every seed in `fuzz/seeds/<target>/`
//! is replayed, then each target runs over a few thousand deterministic
//! pseudo-random inputs shaped like its input, so its invariants hold in CI.
//! Longer, coverage-guided runs: `scripts/fuzz.sh`.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;

use sseplane::event::Position;
use sseplane::fuzz_targets::{self, Target};
use sseplane::sse::StreamIds;

/// Pseudo-random inputs per target.
const ITERATIONS: usize = 3000;

thread_local! {
    /// Set while a target runs: its panic is reported by the caller, not the hook.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `target` on `input`, returning the panic message if it panics.
fn run(target: Target, input: &[u8]) -> Option<String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
    QUIET.with(|quiet| quiet.set(true));
    let result = catch_unwind(AssertUnwindSafe(|| target(input)));
    QUIET.with(|quiet| quiet.set(false));
    let payload = result.err()?;
    Some(
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "non-string panic".into()),
    )
}

fn target(name: &str) -> Target {
    fuzz_targets::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
        .1
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Replays the kept inputs of `name`; fails listing every input that panics.
fn replay(name: &str) {
    let f = target(name);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    let mut count = 0;
    for kind in ["regressions", "seeds"] {
        for path in files(&root.join(kind).join(name)) {
            count += 1;
            let input = std::fs::read(&path).expect("readable input");
            if let Some(message) = run(f, &input) {
                let relative = path.strip_prefix(&root).unwrap_or(&path);
                failures.push(format!("fuzz/{}: {message}", relative.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} kept inputs of {name} fail:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// A small deterministic generator (SplitMix64): the same inputs on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Up to `max` pieces, each a token of `tokens` or a random byte.
    fn pieces(&mut self, tokens: &[&[u8]], max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..self.below(max + 1) {
            if self.chance(15) {
                out.push(self.next() as u8);
            } else {
                out.extend_from_slice(self.pick::<&[u8]>(tokens));
            }
        }
        out
    }

    fn digits(&mut self) -> String {
        match self.below(8) {
            0 => String::new(),
            1 => format!("0{}", self.below(100)),
            2 => format!("+{}", self.below(100)),
            3 => u64::MAX.to_string(),
            4 => "99999999999999999999".into(),
            _ => self
                .next()
                .checked_shr(self.below(64) as u32)
                .unwrap_or(0)
                .to_string(),
        }
    }

    /// JSON-ish text: mostly valid, with whitespace between tokens and awkward
    /// string contents.
    fn json(&mut self, depth: usize) -> String {
        let ws = *self.pick(&["", "", " ", "\n", "\r\n", "\t"]);
        let value = match self.below(if depth == 0 { 5 } else { 7 }) {
            0 => self.pick(&["null", "true", "false"]).to_string(),
            1 => format!(
                "-{}.{}e{}",
                self.below(1000),
                self.below(1000),
                self.below(40)
            ),
            2 => self.digits(),
            3 | 4 => {
                let chars = [
                    "a",
                    "\\n",
                    "\\r",
                    "\\u2028",
                    "\u{2028}",
                    "\\u0000",
                    "\\\"",
                    "\\\\",
                    "é",
                    "😀",
                    "\\ud83d\\ude00",
                    ":",
                    " ",
                    "data: x",
                    "\\u000a",
                ];
                let mut s = String::from('"');
                for _ in 0..self.below(6) {
                    s.push_str(self.pick::<&str>(&chars));
                }
                s.push('"');
                s
            }
            5 => {
                let items: Vec<String> = (0..self.below(4)).map(|_| self.json(depth - 1)).collect();
                format!("[{}]", items.join(","))
            }
            _ => {
                let members: Vec<String> = (0..self.below(4))
                    .map(|i| format!("\"k{i}\"{ws}:{}", self.json(depth - 1)))
                    .collect();
                format!("{{{}}}", members.join(","))
            }
        };
        let mut text = format!("{ws}{value}{ws}");
        if self.chance(3) {
            // Break it now and then: the targets must refuse it quietly.
            let cut = self.below(text.len() + 1);
            if text.is_char_boundary(cut) {
                text.truncate(cut);
            }
        }
        text
    }

    fn event_type(&mut self) -> String {
        let tokens: &[&[u8]] = &[
            b"Type",
            b"a",
            b"Z9",
            b"_",
            b"-",
            b".",
            b":",
            b"sseplane.",
            b"\n",
            b"\r",
            b" ",
            b"/",
        ];
        String::from_utf8_lossy(&self.pieces(tokens, 6)).into_owned()
    }
}

fn inputs(name: &str) -> impl Iterator<Item = Vec<u8>> {
    let mut rng = Rng(0x5eed ^ name.len() as u64);
    let hashes: Vec<String> = (2..=4)
        .map(|n| {
            let channels = &["a", "b:1", "c/d", "e@f"][..n];
            StreamIds::new(channels).encode(&[Position::ZERO])[..8].to_owned()
        })
        .collect();
    let name = name.to_owned();
    (0..ITERATIONS).map(move |_| match name.as_str() {
        "sse_framing" => {
            let mut out = vec![rng.next() as u8];
            out.extend_from_slice(rng.event_type().as_bytes());
            out.push(0);
            out.extend_from_slice(rng.json(3).as_bytes());
            out.push(0);
            out.extend((0..rng.below(17)).map(|_| rng.next() as u8));
            out
        }
        "last_event_id" => {
            let mut out = vec![rng.next() as u8];
            let hash = rng.pick(&hashes).clone();
            let mut token = Vec::new();
            if rng.chance(50) {
                token.extend_from_slice(hash.as_bytes());
            }
            let tokens: &[&[u8]] = &[b"_", b"-", b"0", b"17", b"1700000000000", b"+1", b"ff"];
            token.extend(rng.pieces(tokens, 12));
            out.extend(token);
            out
        }
        "channel_names_and_globs" => {
            let tokens: &[&[u8]] = &[
                b"a", b"Z", b"0", b"_", b"-", b".", b":", b"@", b"/", b"game", b"*", b"**", b"?",
                b"[a-z]", b"[!a]", b"{a,b}", b"\\", b"[", b"{", b" ", b"\n",
            ];
            let mut out = rng.pieces(tokens, 10);
            out.push(0);
            out.extend(rng.pieces(tokens, 10));
            out
        }
        "envelope" => {
            let mut text = String::from(*rng.pick(&["v1\n", "v1\n", "v2\n", ""]));
            text.push_str(&rng.event_type());
            text.push('\n');
            if rng.chance(30) {
                text.push_str("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
            }
            text.push('\n');
            text.push_str(&rng.digits());
            text.push('\n');
            text.push_str(&rng.json(2));
            let mut out = text.into_bytes();
            if rng.chance(10) {
                out.push(rng.next() as u8);
            }
            out
        }
        _ => {
            let tokens: &[&[u8]] = &[
                b"data:",
                b"data: ",
                b"id: ",
                b"id:",
                b"event: ",
                b"retry: ",
                b"retry:",
                b": c",
                b":",
                b"\n",
                b"\n",
                b"\r",
                b"\r\n",
                "\u{feff}".as_bytes(),
                b"\0",
                b"12",
                b"x",
                b" ",
                "é".as_bytes(),
            ];
            let mut out = Vec::new();
            if rng.chance(10) {
                out.extend_from_slice("\u{feff}".as_bytes());
            }
            out.extend(rng.pieces(tokens, 24));
            // The first byte picks the split point of the target's second feed.
            out
        }
    })
}

/// Runs `name` over its pseudo-random inputs, failing on the first panic.
fn random(name: &str) {
    let f = target(name);
    for (i, input) in inputs(name).enumerate() {
        if let Some(message) = run(f, &input) {
            panic!(
                "{name}: pseudo-random input #{i} fails: {message}\n  input: {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }
}

macro_rules! target_tests {
    ($($name:ident),* $(,)?) => {
        mod replay {
            $(#[test] fn $name() { super::replay(stringify!($name)); })*
        }
        mod random {
            $(#[test] fn $name() { super::random(stringify!($name)); })*
        }
    };
}

target_tests!(
    sse_framing,
    last_event_id,
    channel_names_and_globs,
    envelope,
    sse_parser
);

#[test]
fn every_target_is_tested() {
    let tested = [
        "sse_framing",
        "last_event_id",
        "channel_names_and_globs",
        "envelope",
        "sse_parser",
    ];
    let names: Vec<&str> = fuzz_targets::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, tested);
    for name in names {
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(
            source.is_file(),
            "no cargo-fuzz target {}",
            source.display()
        );
    }
}
