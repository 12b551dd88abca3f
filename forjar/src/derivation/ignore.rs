//! A source's ignore rules: gitignore-syntax patterns, and the `.gitignore` files inside it.
//! What they leave out is neither hashed nor imported, so a change to it moves no key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::walk::Kind;

/// What a source leaves out ([`Source::ignore`](super::Source::ignore),
/// [`Source::gitignore`](super::Source::gitignore)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IgnoreRules {
    /// Patterns in gitignore syntax, relative to the source's root, in order.
    pub patterns: Vec<String>,
    /// Whether the `.gitignore` files inside the source apply too (and `.git` is left out).
    pub gitignore: bool,
}

impl IgnoreRules {
    /// Whether the rules leave nothing out.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty() && !self.gitignore
    }

    /// The patterns as one matcher rooted at `root`; an invalid pattern is named.
    pub(crate) fn matcher(&self, root: &Path) -> Result<Option<Gitignore>, (String, String)> {
        if self.patterns.is_empty() {
            return Ok(None);
        }
        let mut builder = GitignoreBuilder::new(root);
        for pattern in &self.patterns {
            builder
                .add_line(None, pattern)
                .map_err(|e| (pattern.clone(), e.to_string()))?;
        }
        builder
            .build()
            .map(Some)
            .map_err(|e| (self.patterns.join(" "), e.to_string()))
    }

    /// The filter the rules make of the tree at `root`, if they leave anything out.
    pub(crate) fn filter(&self, root: &Path) -> Option<SourceFilter> {
        if self.is_empty() {
            return None;
        }
        Some(SourceFilter {
            root: root.to_path_buf(),
            // Checked when the source was made.
            patterns: self.matcher(root).ok().flatten(),
            gitignore: self.gitignore,
            dirs: Mutex::new(HashMap::new()),
        })
    }
}

/// Hashes or copies the tree at `root` with what `rules` leave out left out.
pub(crate) fn with_rules<T>(
    rules: &IgnoreRules,
    root: &Path,
    f: impl FnOnce(Option<crate::walk::Keep<'_>>) -> T,
) -> T {
    match rules.filter(root) {
        None => f(None),
        Some(filter) => {
            let keeps = |path: &Path, kind: Kind| filter.keeps(path, kind);
            f(Some(crate::walk::Keep(&keeps)))
        }
    }
}

/// The rules of one source applied to its tree: what [`SourceFilter::keeps`].
pub(crate) struct SourceFilter {
    root: PathBuf,
    patterns: Option<Gitignore>,
    gitignore: bool,
    /// Each directory's `.gitignore`, read once.
    dirs: Mutex<HashMap<PathBuf, Option<Arc<Gitignore>>>>,
}

impl SourceFilter {
    /// Whether `path`, below the root, is part of the source. The source's own patterns
    /// decide first; then each `.gitignore` from the entry's directory up to the root, the
    /// nearest one that matches deciding, as git does. A directory left out is not entered, so
    /// nothing below it is asked about.
    pub(crate) fn keeps(&self, path: &Path, kind: Kind) -> bool {
        let is_dir = kind == Kind::Dir;
        if let Some(patterns) = &self.patterns {
            match patterns.matched(path, is_dir) {
                Match::Ignore(_) => return false,
                Match::Whitelist(_) => return true,
                Match::None => {}
            }
        }
        if !self.gitignore {
            return true;
        }
        if is_dir && path.file_name().is_some_and(|n| n == ".git") {
            return false;
        }
        let mut dir = path.parent();
        while let Some(at) = dir.filter(|d| d.starts_with(&self.root)) {
            if let Some(gitignore) = self.gitignore_of(at) {
                match gitignore.matched(path, is_dir) {
                    Match::Ignore(_) => return false,
                    Match::Whitelist(_) => return true,
                    Match::None => {}
                }
            }
            dir = at.parent();
        }
        true
    }

    /// The `.gitignore` of `dir`, if it has one that is a regular file: opened without following
    /// a symlink, so a link named `.gitignore` reads nothing from outside the source.
    fn gitignore_of(&self, dir: &Path) -> Option<Arc<Gitignore>> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        dirs.entry(dir.to_path_buf())
            .or_insert_with(|| {
                let file = dir.join(".gitignore");
                let mut opened = std::fs::File::options()
                    .read(true)
                    .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
                    .open(&file)
                    .ok()
                    .filter(|f| f.metadata().is_ok_and(|m| m.is_file()))?;
                let mut text = String::new();
                opened.read_to_string(&mut text).ok()?;
                let mut builder = GitignoreBuilder::new(dir);
                for line in text.lines() {
                    // Lines git cannot read are skipped, as git skips them.
                    let _ = builder.add_line(Some(file.clone()), line);
                }
                builder.build().ok().map(Arc::new)
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_then_the_nearest_gitignore_decide() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("sub/deep")).unwrap();
        std::fs::write(root.join(".gitignore"), "*.log\nbuild/\n").unwrap();
        std::fs::write(root.join("sub/.gitignore"), "!keep.log\n").unwrap();
        let rules = IgnoreRules {
            patterns: vec!["*.md".into(), "!NOTES.md".into()],
            gitignore: true,
        };
        let filter = rules.filter(root).unwrap();
        let keeps = |p: &str, kind| filter.keeps(&root.join(p), kind);
        assert!(!keeps("README.md", Kind::File));
        assert!(!keeps("sub/deep/x.md", Kind::File));
        assert!(keeps("NOTES.md", Kind::File));
        assert!(!keeps("a.log", Kind::File));
        assert!(
            keeps("sub/keep.log", Kind::File),
            "the nearer .gitignore wins"
        );
        assert!(!keeps("sub/other.log", Kind::File));
        assert!(!keeps("build", Kind::Dir));
        assert!(keeps("build", Kind::File), "`build/` is for directories");
        assert!(!keeps(".git", Kind::Dir));
        assert!(keeps("src.c", Kind::File));
        let patterns_only = IgnoreRules {
            patterns: vec!["*.log".into()],
            gitignore: false,
        };
        let filter = patterns_only.filter(root).unwrap();
        assert!(filter.keeps(&root.join("build"), Kind::Dir));
        assert!(filter.keeps(&root.join(".git"), Kind::Dir));
        assert!(!filter.keeps(&root.join("sub/x.log"), Kind::File));
    }

    #[test]
    fn a_gitignore_that_is_a_symlink_is_not_read() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("rules"), "*\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("rules"), dir.path().join(".gitignore"))
            .unwrap();
        let rules = IgnoreRules {
            patterns: Vec::new(),
            gitignore: true,
        };
        let filter = rules.filter(dir.path()).unwrap();
        assert!(filter.keeps(&dir.path().join("main.c"), Kind::File));
    }

    #[test]
    fn a_bad_pattern_is_named() {
        let rules = IgnoreRules {
            patterns: vec!["ok.txt".into(), "{a,b".into()],
            gitignore: false,
        };
        let (pattern, reason) = rules.matcher(Path::new("/src")).unwrap_err();
        assert_eq!(pattern, "{a,b");
        assert!(reason.contains("unclosed alternate group"), "{reason}");
    }
}
