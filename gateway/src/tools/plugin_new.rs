//! `mailgate plugin new`: writes a plugin skeleton that builds and loads as it is, in Rust,
//! JavaScript or Python, with a `./test` script that builds it and checks it offline with
//! `mailgate plugin test`.
//!
//! The templates are `gateway/templates/plugin-new/` (embedded in the binary). A skeleton
//! needs the mailgate SDK: the `plugin-sdk/` directory of a mailgate checkout (the Rust
//! crate, `js/` and `python/` in it, and `../wit`). `--sdk` names it; the default is the
//! checkout this binary was built from, when it still exists. The skeleton refers to it by
//! absolute path (the Rust `Cargo.toml` dependency, the JS/Python `build` scripts).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The command line of `mailgate plugin new`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The directory to create; its last component is the plugin's name (`a-z 0-9 - _`,
    /// starting with a letter).
    pub name: PathBuf,
    /// The plugin's language.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// The `plugin-sdk` directory of a mailgate checkout. Default: the one this binary was
    /// built from.
    #[arg(long, value_name = "DIR")]
    pub sdk: Option<PathBuf>,
}

/// A language `mailgate plugin new` writes skeletons in.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// Rust, with the `mailgate-plugin-sdk` crate.
    Rust,
    /// JavaScript, with plugin-sdk/js (componentize-js).
    Js,
    /// Python, with plugin-sdk/python (componentize-py).
    Python,
}

/// One file of a skeleton: where it goes (placeholders allowed), its template, whether it
/// is a script.
struct File {
    path: &'static str,
    text: &'static str,
    executable: bool,
}

macro_rules! template {
    ($path:expr, $file:literal) => {
        template!($path, $file, false)
    };
    ($path:expr, $file:literal, $exec:expr) => {
        File {
            path: $path,
            text: include_str!(concat!("../../templates/plugin-new/", $file)),
            executable: $exec,
        }
    };
}

fn files(lang: Lang) -> Vec<File> {
    let mut files = vec![
        template!("README.md", "common/README.md"),
        template!("messages/hello.eml", "common/hello.eml"),
        template!("test", "common/test.sh", true),
    ];
    files.extend(match lang {
        Lang::Rust => vec![
            template!("Cargo.toml", "rust/Cargo.toml"),
            template!("src/lib.rs", "rust/src/lib.rs"),
            template!(".gitignore", "rust/gitignore"),
        ],
        Lang::Js => vec![
            template!("package.json", "js/package.json"),
            template!("plugin.js", "js/plugin.js"),
            template!("build", "js/build", true),
            template!(".gitignore", "js/gitignore"),
        ],
        Lang::Python => vec![
            template!("pyproject.toml", "python/pyproject.toml"),
            template!("{{module}}.py", "python/plugin.py"),
            template!("build", "python/build", true),
            template!(".gitignore", "python/gitignore"),
        ],
    });
    files
}

/// The plugin name rule of the gateway config (`[[plugin]] name`), starting with a letter
/// so it is also a package name in the three languages.
fn valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// `my-plugin` → `MyPlugin`.
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The SDK directory: `--sdk`, else the checkout this binary was built from.
fn sdk_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let (dir, origin) = match given {
        Some(d) => (d.to_path_buf(), "--sdk"),
        None => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk"),
            "the mailgate checkout this binary was built from",
        ),
    };
    let dir = dir.canonicalize().with_context(|| {
        format!(
            "no mailgate SDK at {} ({origin}): pass --sdk PATH/TO/mailgate/plugin-sdk",
            dir.display()
        )
    })?;
    for part in [
        "Cargo.toml",
        "js/package.json",
        "python/mailgate-plugin-py",
        "../wit",
    ] {
        if !dir.join(part).exists() {
            bail!(
                "{} ({origin}) is not mailgate's plugin-sdk directory: no {part}",
                dir.display()
            );
        }
    }
    Ok(dir)
}

fn render(text: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(text.to_string(), |t, (k, v)| {
        t.replace(&format!("{{{{{k}}}}}"), v)
    })
}

/// Runs the command; the process exit status is the `Ok` value.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let name = args
        .name
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    if !valid_name(&name) {
        eprintln!(
            "mailgate plugin new: {name:?} is not a plugin name: a-z 0-9 - _, starting with a letter"
        );
        return Ok(64);
    }
    if args.name.exists() {
        bail!("{} exists already", args.name.display());
    }
    let sdk = sdk_dir(args.sdk.as_deref())?;
    let sdk_text = sdk.to_str().context("the SDK path is not UTF-8")?;
    if sdk_text.contains(['"', '\\', '\'', '$', '`']) {
        bail!("the SDK path {sdk_text:?} has characters the skeleton's scripts cannot quote");
    }
    let module = name.replace('-', "_");
    let ty = type_name(&name);
    let (language, build_command, wasm, build) = match args.lang {
        Lang::Rust => (
            "Rust",
            "cargo build --release --target wasm32-wasip2".to_string(),
            format!("target/wasm32-wasip2/release/{module}.wasm"),
            format!(
                "cargo build --release --target wasm32-wasip2 --quiet\n    \
                 wasm=${{CARGO_TARGET_DIR:-target}}/wasm32-wasip2/release/{module}.wasm"
            ),
        ),
        Lang::Js | Lang::Python => (
            if args.lang == Lang::Js {
                "JavaScript"
            } else {
                "Python"
            },
            "./build".to_string(),
            format!("{name}.wasm"),
            format!("wasm=$work/{name}.wasm\n    ./build \"$wasm\""),
        ),
    };
    let vars = [
        ("name", name.as_str()),
        ("module", module.as_str()),
        ("Type", ty.as_str()),
        ("sdk", sdk_text),
        ("language", language),
        ("build_command", build_command.as_str()),
        ("wasm", wasm.as_str()),
        ("build", build.as_str()),
    ];
    for f in files(args.lang) {
        let path = args.name.join(render(f.path, &vars));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, render(f.text, &vars))
            .with_context(|| format!("writing {}", path.display()))?;
        if f.executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("making {} executable", path.display()))?;
        }
    }
    if args.lang == Lang::Rust {
        // The dependency versions the SDK is built and tested with in its checkout (cargo
        // drops the entries the plugin does not use).
        let lock = sdk.join("../Cargo.lock");
        if lock.exists() {
            std::fs::copy(&lock, args.name.join("Cargo.lock"))
                .with_context(|| format!("copying {}", lock.display()))?;
        }
    }
    println!(
        "created {} ({language} plugin {name}, SDK {sdk_text})\n\
         build: cd {} && {build_command}\n\
         test:  cd {} && ./test",
        args.name.display(),
        args.name.display(),
        args.name.display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("spam-check_2"));
        assert!(!valid_name("2fast"));
        assert!(!valid_name("Big"));
        assert!(!valid_name(""));
        assert!(!valid_name("a.b"));
        assert_eq!(type_name("spam-check_2"), "SpamCheck2");
    }

    #[test]
    fn every_placeholder_is_filled() {
        let vars = [
            ("name", "n"),
            ("module", "n"),
            ("Type", "N"),
            ("sdk", "/s"),
            ("language", "L"),
            ("build_command", "b"),
            ("wasm", "w"),
            ("build", "b"),
        ];
        for lang in [Lang::Rust, Lang::Js, Lang::Python] {
            for f in files(lang) {
                let out = render(f.text, &vars) + &render(f.path, &vars);
                assert!(!out.contains("{{"), "{lang:?} {}: {out}", f.path);
            }
        }
    }
}
