//! A library that cannot be used is refused whole, with an error naming the file and the line or
//! field: unbounded or oversized regular expressions, a word that is both a keyword and an
//! exception, a word that is empty or too long once normalised, a path out of the folder.

mod common;

use common::write;
use govbox_policy::Policy;

const HEAD: &str = "format = \"govbox-policy/1\"\nname = \"bad\"\nversion = \"1\"\nexceptions = [\"ex.txt\"]\n\
    [[category]]\nid = \"v\"\naction = \"refuse\"\nrefusal = \"no\"\nkeywords = [\"kw.txt\"]\n";

fn load(policy_tail: &str, keywords: &str, exceptions: &str) -> String {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write(dir.path(), "policy.toml", &format!("{HEAD}{policy_tail}"));
    write(dir.path(), "kw.txt", keywords);
    write(dir.path(), "ex.txt", exceptions);
    match Policy::load_dir(dir.path()) {
        Ok(_) => "accepted".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_good_library_loads() {
    assert_eq!(load("patterns = [{ id = \"p\", regex = \"ab{1,3}c\" }]\n", "炸药\n", "炸药厂\n"), "accepted");
}

#[test]
fn unusable_libraries_are_refused_naming_what() {
    let long = "字".repeat(65);
    let cases = [
        (
            load("patterns = [{ id = \"p\", regex = \"ab+c\" }]\n", "x\n", ""),
            "pattern p': its match length is unbounded",
        ),
        (load("patterns = [{ id = \"p\", regex = \"a{1,500}\" }]\n", "x\n", ""), "pattern p': matches up to 500 bytes"),
        (load("patterns = [{ id = \"p\", regex = \"a?\" }]\n", "x\n", ""), "matches the empty string"),
        (load("patterns = [{ id = \"p\", regex = \"(\" }]\n", "x\n", ""), "pattern p'"),
        (load("", "炸药\n", "炸 药\n"), "'ex.txt': line 1: the word is both a keyword and an exception"),
        (load("", "ok\n \u{200B} . \n", ""), "'kw.txt': line 2: the word is empty once normalised"),
        (load("", &format!("ok\n{long}\n"), ""), "'kw.txt': line 2: the word has 65 characters"),
    ];
    for (got, want) in &cases {
        assert!(got.contains(want), "{got:?} lacks {want:?}");
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write(dir.path(), "policy.toml", HEAD);
    write(dir.path(), "ex.txt", "");
    let missing = Policy::load_dir(dir.path()).map(|_| ()).map_err(|e| e.to_string());
    assert!(matches!(&missing, Err(m) if m.contains("kw.txt")), "{missing:?}");
}
