//! A generated library of more than 10,000 keywords, written to a temporary folder the way an
//! agency ships one, and the disguises the tests apply to its keywords.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use govbox_policy::{NormaliseOptions, Normaliser, Policy};

/// Simplified characters with a traditional form in the built-in table, and that form.
pub const TRADITIONAL_PAIRS: [(char, char); 12] = [
    ('弹', '彈'),
    ('药', '藥'),
    ('枪', '槍'),
    ('杀', '殺'),
    ('钱', '錢'),
    ('贼', '賊'),
    ('赌', '賭'),
    ('骗', '騙'),
    ('诈', '詐'),
    ('绑', '綁'),
    ('监', '監'),
    ('狱', '獄'),
];

pub const REFUSAL_VIOLENCE: &str = "抱歉，这个问题涉及暴力内容，我无法回答。";
pub const REFUSAL_FRAUD: &str = "抱歉，我不能协助与诈骗有关的请求。";
pub const REPLACEMENT: &str = "[已屏蔽]";

/// The generated library.
pub struct Library {
    pub dir: tempfile::TempDir,
    /// Keywords of the refusing categories, as written in the lists.
    pub cjk: Vec<String>,
    pub latin: Vec<String>,
    pub traditional: Vec<String>,
    /// Keywords of the replacing category.
    pub replaced: Vec<String>,
    /// Benign longer words, each containing one keyword of `cjk`.
    pub exceptions: Vec<(String, String)>,
}

impl Library {
    pub fn policy(&self) -> Arc<Policy> {
        match Policy::load_dir(self.dir.path()) {
            Ok(p) => Arc::new(p),
            Err(e) => panic!("the generated library compiles: {e}"),
        }
    }
}

/// A small deterministic generator, so that a failure names the same keyword on every run.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u32) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % u64::from(n)) as u32
    }
}

fn cjk_char(r: &mut Lcg) -> char {
    // CJK Unified Ideographs U+4E00..U+9FA5; a pure ideograph is always a letter.
    char::from_u32(0x4E00 + r.next(0x51A6)).unwrap_or('中')
}

/// Writes a library of `n_cjk` CJK keywords (at least 10,000 in the tests) plus Latin,
/// traditional-foldable and replaced keywords, and 1,000 exceptions.
pub fn generate(n_cjk: usize) -> Library {
    let norm = Normaliser::new(NormaliseOptions { traditional: true, ..Default::default() })
        .unwrap_or_else(|_| panic!("default options compile"));
    let mut seen = HashSet::new();
    let mut r = Lcg(26);
    let unique = |word: String, seen: &mut HashSet<String>| seen.insert(norm.normalise(&word)).then_some(word);
    let mut cjk = Vec::new();
    while cjk.len() < n_cjk {
        let len = 2 + r.next(3) as usize;
        let w: String = (0..len).map(|_| cjk_char(&mut r)).collect();
        cjk.extend(unique(w, &mut seen));
    }
    let mut latin = Vec::new();
    while latin.len() < 500 {
        let len = 5 + r.next(4) as usize;
        // Letters that have Cyrillic look-alikes come often, so the homoglyph disguise has work.
        let w: String = (0..len).map(|_| b"aeopcxybdkmnrstz"[r.next(16) as usize] as char).collect();
        latin.extend(unique(w, &mut seen));
    }
    let mut traditional = Vec::new();
    while traditional.len() < 200 {
        let mut w = String::from(cjk_char(&mut r));
        for _ in 0..2 {
            w.push(TRADITIONAL_PAIRS[r.next(12) as usize].0);
        }
        traditional.extend(unique(w, &mut seen));
    }
    let mut replaced = Vec::new();
    while replaced.len() < 100 {
        let w = format!("{}{}{}", cjk_char(&mut r), cjk_char(&mut r), cjk_char(&mut r));
        replaced.extend(unique(w, &mut seen));
    }
    let mut exceptions = Vec::new();
    for kw in cjk.iter().step_by(n_cjk / 1000) {
        let benign = format!("{}{kw}{}", cjk_char(&mut r), cjk_char(&mut r));
        if seen.insert(norm.normalise(&benign)) {
            exceptions.push((kw.clone(), benign));
        }
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (violence, fraud) = cjk.split_at(cjk.len() / 2);
    let mut fraud = fraud.to_vec();
    fraud.extend(latin.iter().cloned());
    let mut violence = violence.to_vec();
    violence.extend(traditional.iter().cloned());
    write(dir.path(), "lists/violence.txt", &violence.join("\n"));
    write(
        dir.path(),
        "lists/fraud.txt",
        &format!("# fraud, with one explicit rule id\nfraud-first\t{}\n", fraud.join("\n")),
    );
    write(dir.path(), "lists/privacy.txt", &replaced.join("\n"));
    let ex: Vec<&str> = exceptions.iter().map(|(_, b)| b.as_str()).collect();
    write(dir.path(), "lists/exceptions.txt", &ex.join("\n"));
    write(
        dir.path(),
        "policy.toml",
        &format!(
            "format = \"govbox-policy/1\"\nname = \"generated\"\nversion = \"2026.12.1\"\n\
             exceptions = [\"lists/exceptions.txt\"]\n[normalise]\ntraditional = true\n\
             [[category]]\nid = \"violence\"\naction = \"refuse\"\nrefusal = \"{REFUSAL_VIOLENCE}\"\n\
             keywords = [\"lists/violence.txt\"]\npatterns = [{{ id = \"violence-re-1\", regex = \"qq[0-9]{{5,9}}zz\" }}]\n\
             [[category]]\nid = \"fraud\"\naction = \"refuse\"\nrefusal = \"{REFUSAL_FRAUD}\"\nkeywords = [\"lists/fraud.txt\"]\n\
             [[category]]\nid = \"privacy\"\naction = \"replace\"\nreplacement = \"{REPLACEMENT}\"\nkeywords = [\"lists/privacy.txt\"]\n"
        ),
    );
    Library { dir, cjk, latin, traditional, replaced, exceptions }
}

pub fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
    }
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Ways of writing a keyword that a reader still reads as the keyword.
pub fn disguises(word: &str) -> Vec<(&'static str, String)> {
    let between = |sep: &str| word.chars().map(String::from).collect::<Vec<_>>().join(sep);
    let full: String = word
        .chars()
        .map(|c| if c.is_ascii_graphic() { char::from_u32(c as u32 + 0xFEE0).unwrap_or(c) } else { c })
        .collect();
    let homoglyph: String = word
        .chars()
        .map(|c| match c {
            'a' => 'а',
            'e' => 'е',
            'o' => 'о',
            'p' => 'р',
            'c' => 'с',
            'x' => 'х',
            'y' => 'у',
            _ => c,
        })
        .collect();
    let accented: String = word.chars().flat_map(|c| [c, '\u{0301}']).collect();
    vec![
        ("full width", full.clone()),
        ("upper case", word.to_uppercase()),
        ("full width upper case", full.to_uppercase()),
        ("zero-width space", between("\u{200B}")),
        ("zero-width joiner and BOM", between("\u{200D}\u{FEFF}")),
        ("spaces", between(" ")),
        ("ideographic space", between("\u{3000}")),
        ("punctuation", between("·")),
        ("mixed punctuation", between("*-。")),
        ("emoji", between("🙂")),
        ("homoglyphs", homoglyph.to_uppercase()),
        ("combining accents", accented),
    ]
}

/// The traditional spelling of a keyword built from [`TRADITIONAL_PAIRS`].
pub fn traditional(word: &str) -> String {
    word.chars().map(|c| TRADITIONAL_PAIRS.iter().find(|p| p.0 == c).map_or(c, |p| p.1)).collect()
}
