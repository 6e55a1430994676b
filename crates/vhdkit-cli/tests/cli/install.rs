//! What an installed tool ships besides the binary: shell completions and man pages.

use std::fs;
use std::process::{Command, Stdio};

use crate::util::{have_tool, run, run_success, vhdkit};

/// Every subcommand, as the top-level help lists them.
const COMMANDS: [&str; 17] = [
    "info",
    "chain",
    "convert",
    "reparent",
    "flatten",
    "merge",
    "compact",
    "resize",
    "check",
    "repair",
    "create",
    "share",
    "relink",
    "map",
    "serve",
    "completions",
    "man",
];

#[test]
fn bash_loads_the_completion_and_completes_subcommands() {
    if !have_tool("bash", "loading the bash completion") {
        return;
    }
    let exe = env!("CARGO_BIN_EXE_vhdkit");
    // What bash does on `vhdkit re<TAB>`: call the registered function with the words so far.
    let script = format!(
        r#"source <("{exe}" completions bash) || exit 9
complete -p vhdkit || exit 8
COMP_WORDS=(vhdkit re); COMP_CWORD=1; COMP_LINE="vhdkit re"; COMP_POINT=9
_vhdkit vhdkit re vhdkit
printf 'reply: %s\n' "${{COMPREPLY[*]}}""#
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("-F _vhdkit vhdkit"),
        "not registered: {stdout}"
    );
    let reply = stdout
        .lines()
        .find_map(|l| l.strip_prefix("reply: "))
        .unwrap();
    let mut words: Vec<&str> = reply.split_whitespace().collect();
    words.sort_unstable();
    assert_eq!(
        words,
        ["relink", "repair", "reparent", "resize"],
        "{stdout}"
    );
}

#[test]
fn every_shell_gets_a_script_naming_every_command() {
    for (shell, marker) in [
        ("bash", "complete -F _vhdkit"),
        ("zsh", "#compdef vhdkit"),
        ("fish", "complete -c vhdkit"),
        ("powershell", "Register-ArgumentCompleter"),
        ("elvish", "edit:completion:arg-completer[vhdkit]"),
    ] {
        let r = run_success(["completions", shell]);
        assert!(r.stdout.contains(marker), "{shell}: no {marker:?}");
        for c in COMMANDS {
            assert!(r.stdout.contains(c), "{shell}: {c} missing");
        }
    }
    // An unknown shell is a usage error.
    let r = run(["completions", "tcsh"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
}

#[test]
fn one_man_page_per_command_and_each_renders_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let r = run_success(["man".as_ref(), "--out".as_ref(), out.as_os_str()]);
    let mut names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<String> = COMMANDS.iter().map(|c| format!("vhdkit-{c}.1")).collect();
    want.push("vhdkit.1".into());
    want.sort();
    assert_eq!(names, want);
    assert_eq!(r.stdout.lines().count(), want.len(), "{}", r.stdout);

    if !have_tool("groff", "rendering the man pages") {
        return;
    }
    for name in &names {
        let page = out.join(name);
        let g = Command::new("groff")
            // -P-cbou: plain text, no overstriking for bold and underline.
            .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
            .arg(&page)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&g.stderr);
        assert!(g.status.success() && stderr.is_empty(), "{name}: {stderr}");
        // Justified and possibly hyphenated: compare words, not layout.
        let text = String::from_utf8_lossy(&g.stdout);
        let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let synopsis = name.trim_end_matches(".1").replacen('-', " ", 1);
        assert!(words.contains("NAME"), "{name}: {words}");
        assert!(
            words.contains(&format!("SYNOPSIS {synopsis}")),
            "{name}: {words}"
        );
    }
}

#[test]
fn man_prints_the_main_page_without_out() {
    let r = run_success(["man"]);
    assert!(
        r.stdout.starts_with(".ie \\n(.g .ds Aq"),
        "{}",
        &r.stdout[..80.min(r.stdout.len())]
    );
    assert!(r.stdout.contains(".TH vhdkit 1"), "{}", r.stdout);
    for c in COMMANDS {
        assert!(
            r.stdout.contains(&format!("vhdkit\\-{c}(1)")),
            "{c} not referenced"
        );
    }
}

#[test]
fn man_replaces_a_page_but_never_writes_through_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, b"keep me").unwrap();
    let out = dir.path().join("man1");
    fs::create_dir(&out).unwrap();
    std::os::unix::fs::symlink(&victim, out.join("vhdkit.1")).unwrap();
    fs::write(out.join("vhdkit-info.1"), b"old page").unwrap();

    run_success(["man".as_ref(), "--out".as_ref(), out.as_os_str()]);
    assert_eq!(fs::read(&victim).unwrap(), b"keep me");
    let md = fs::symlink_metadata(out.join("vhdkit.1")).unwrap();
    assert!(md.is_file(), "the link was not replaced by the page");
    let info = fs::read_to_string(out.join("vhdkit-info.1")).unwrap();
    assert!(info.contains(".TH vhdkit-info 1"), "{info}");
    // --quiet writes the pages and lists nothing.
    let r = run_success([
        "--quiet".as_ref(),
        "man".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(r.stdout, "");
    assert!(fs::read_to_string(out.join("vhdkit-man.1"))
        .unwrap()
        .contains(".TH vhdkit-man 1"));
    // No temporary file is left behind.
    assert_eq!(fs::read_dir(&out).unwrap().count(), COMMANDS.len() + 1);
}

#[test]
fn man_into_a_folder_it_cannot_create_is_one_line_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    let r = run([
        "man".as_ref(),
        "--out".as_ref(),
        file.join("man1").as_os_str(),
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.starts_with("vhdkit: error: "), "{}", r.stderr);
}

#[test]
fn completions_on_a_closed_pipe_do_not_panic() {
    // The read end is gone before vhdkit writes, so its first write fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = vhdkit()
        .args(["completions", "bash"])
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(101), "panicked: {out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
