//! Reading a guide: its `<!-- tested: … -->` blocks, their commands and expected output.

use super::*;

pub(super) fn read_doc(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A command of a tested block and what its output must show.
#[derive(Debug)]
pub(super) struct Step {
    /// The command as printed: continuation lines, quotes and here-documents kept.
    pub(super) cmd: String,
    /// The `# → …` lines after it.
    pub(super) expect: Vec<String>,
    /// `# → [exit N]`: the exit status it must end with.
    pub(super) exit: i32,
}

#[derive(Debug)]
pub(super) struct Block {
    pub(super) name: String,
    pub(super) steps: Vec<Step>,
}

/// Tracks shell quoting across the lines of one command.
#[derive(Default)]
pub(super) struct Lexer {
    pub(super) single: bool,
    pub(super) double: bool,
    pub(super) heredoc: Option<String>,
}

impl Lexer {
    /// Takes one line; true when the command is complete at its end.
    pub(super) fn feed(&mut self, line: &str) -> bool {
        if let Some(end) = &self.heredoc {
            if line.trim() == end {
                self.heredoc = None;
                return true;
            }
            return false;
        }
        let chars: Vec<char> = line.chars().collect();
        let mut continued = false;
        let mut k = 0;
        while k < chars.len() {
            let c = chars[k];
            if self.single {
                self.single = c != '\'';
            } else if self.double {
                match c {
                    '\\' => k += 1,
                    '"' => self.double = false,
                    _ => {}
                }
            } else {
                match c {
                    '\'' => self.single = true,
                    '"' => self.double = true,
                    '\\' => {
                        continued = k + 1 == chars.len();
                        k += 1;
                    }
                    '#' if k == 0 || chars[k - 1].is_whitespace() => break,
                    '<' if chars.get(k + 1) == Some(&'<') && chars.get(k + 2) != Some(&'<') => {
                        let rest: String = chars[k + 2..].iter().collect();
                        let word = rest.split_whitespace().next().unwrap_or_default().trim_matches(['\'', '"']).to_string();
                        assert!(!word.is_empty(), "a here-document needs its end word: {line}");
                        self.heredoc = Some(word);
                        return false;
                    }
                    _ => {}
                }
            }
            k += 1;
        }
        !(self.single || self.double || continued)
    }
}

/// The commands of a ```sh block's lines, with the expectations that follow each.
pub(super) fn split_steps(name: &str, body: &[&str]) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    let mut lex = Lexer::default();
    for line in body {
        if cur.is_empty() {
            let t = line.trim();
            if let Some(e) = t.strip_prefix("# →") {
                let step = steps.last_mut().unwrap_or_else(|| panic!("{name}: `# →` before any command"));
                match e.trim().strip_prefix("[exit ").and_then(|c| c.strip_suffix(']')) {
                    Some(code) => step.exit = code.parse().expect("[exit N] holds a number"),
                    None => step.expect.push(e.trim().to_string()),
                }
                continue;
            }
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
        }
        cur.push(line);
        if lex.feed(line) {
            steps.push(Step { cmd: cur.join("\n"), expect: Vec::new(), exit: 0 });
            cur.clear();
        }
    }
    assert!(cur.is_empty(), "{name}: unterminated command {cur:?}");
    steps
}

/// Every block of `text` marked `<!-- tested: NAME … -->`, in order.
pub(super) fn tested_blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some(m) = lines[i].strip_prefix("<!-- tested: ") {
            let name = m.split_whitespace().next().unwrap_or_default().trim_end_matches("-->").to_string();
            assert_eq!(lines.get(i + 1).copied(), Some("```sh"), "{name}: the marker sits right above a ```sh block");
            let end = (i + 2..lines.len()).find(|&j| lines[j] == "```").unwrap_or_else(|| panic!("{name}: unclosed block"));
            assert!(!out.iter().any(|b: &Block| b.name == name), "two blocks named {name}");
            out.push(Block { steps: split_steps(&name, &lines[i + 2..end]), name });
            i = end;
        }
        i += 1;
    }
    out
}

/// The ```sh blocks of `text` that `curl` the vault but carry no `tested` marker.
pub(super) fn untested_curl_blocks(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i] == "```sh" {
            let end = (i + 1..lines.len()).find(|&j| lines[j] == "```").unwrap_or(lines.len());
            let tested = i > 0 && lines[i - 1].starts_with("<!-- tested: ");
            if !tested
                && lines[i + 1..end].iter().any(|l| {
                    l.contains("curl ") && (l.contains("127.0.0.1:8750") || l.contains("$QOIMA_URL")) && !l.trim_start().starts_with('#')
                })
            {
                out.push(format!("line {}: {}", i + 1, lines[i + 1..end].join("\n")));
            }
            i = end;
        }
        i += 1;
    }
    out
}

/// Whether `output` shows `expected`: its `…`-separated fragments, in order.
pub(super) fn shows(output: &str, expected: &str) -> bool {
    let mut at = 0;
    for fragment in expected.split('…').map(str::trim).filter(|f| !f.is_empty()) {
        match output[at..].find(fragment) {
            Some(i) => at += i + fragment.len(),
            None => return false,
        }
    }
    true
}

/// `cargo run -- serve ARGS` or `qoima serve ARGS`: the ARGS.
pub(super) fn serve_args(cmd: &str) -> Option<Vec<String>> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    match words.as_slice() {
        ["cargo", "run", "--", "serve", rest @ ..] | ["qoima", "serve", rest @ ..] => Some(rest.iter().map(|w| w.to_string()).collect()),
        _ => None,
    }
}

#[test]
fn the_block_reader_splits_commands_and_expectations() {
    let doc = "text `<!-- tested: not-a-marker -->`\n<!-- tested: demo (notes) -->\n```sh\n# a comment: it's ignored\ncurl -s 'http://x/a' \\\n  -d '{\"a\":\n 1}'\n# → {\"a\":…1}\n# → [exit 3]\ncat > f <<'EOF'\nx = 1 # kept\nEOF\necho \"it's\" # done\n```\n";
    let blocks = tested_blocks(doc);
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].name, "demo");
    let s = &blocks[0].steps;
    assert_eq!(s.len(), 3, "{s:#?}");
    assert_eq!(s[0].cmd, "curl -s 'http://x/a' \\\n  -d '{\"a\":\n 1}'");
    assert_eq!((s[0].expect.clone(), s[0].exit), (vec!["{\"a\":…1}".to_string()], 3));
    assert_eq!(s[1].cmd, "cat > f <<'EOF'\nx = 1 # kept\nEOF");
    assert_eq!(s[2].cmd, "echo \"it's\" # done");
    assert!(shows("{\"a\": 2, \"b\": 1}", "{\"a\":…1}") && !shows("1 {\"a\":", "{\"a\":…1}"));
    assert_eq!(serve_args("cargo run -- serve"), Some(vec![]));
    assert_eq!(serve_args("qoima serve --config ~/q.toml"), Some(vec!["--config".to_string(), "~/q.toml".to_string()]));
}
