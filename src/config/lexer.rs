//! Tokenizer for the csync2 configuration language.
//!
//! A *token* is one of: a *keyword* (a reserved word such as `group` or
//! `do-local`), a *string* (either a *word* — a run of characters other than
//! whitespace and `@ ; ( ) # "` that does not end in `:` — or a *quoted
//! string* between double quotes, with no escapes), or one of the
//! punctuation tokens `{ } ( ) ; : @`. `#` starts a comment that runs to the
//! end of the line.
//!
//! The rules reproduce csync2's flex scanner, including its less obvious
//! corners, because a csync2 config must tokenize the same way here:
//!
//! - Keywords are reserved wherever they appear unquoted: `include key;`
//!   is an error; `include "key";` names a file called `key`.
//! - `{` and `}` are ordinary word characters; they are tokens only when
//!   they stand alone (`group g{` is the word `g{`, as in csync2).
//! - A word never ends in `:`, so `on host*: /path;` yields the word
//!   `host*` and a `:` token, while `a:b` is one word.
//! - An empty quoted string `""` produces no token at all.
//! - `config FILE...;` is handled here, not by the parser: the named files
//!   are tokenized in place, so `config` may appear anywhere, even inside a
//!   group. Several files may follow one `config`. Relative names are taken
//!   relative to the directory of the file that contains the `config`
//!   statement (csync2 opens them relative to its working directory, which
//!   is unpredictable under cron or inetd).

use std::fmt;
use std::path::{Path, PathBuf};

use super::{ConfigError, Location};
use crate::trusted::{Kind, TrustError};

/// How many `config` includes may be nested, counted from the main file.
/// csync2 allows the same depth (`MAX_INCLUDE_DEPTH` in its scanner).
pub(crate) const MAX_INCLUDE_DEPTH: usize = 10;

/// The reserved words of the language, exactly csync2's list (`config` is
/// handled by the tokenizer itself and `port` is a snapsync extension that
/// is recognised by the parser in context, so neither is reserved here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keyword {
    Nossl,
    Ignore,
    Database,
    Group,
    Host,
    Exclude,
    Include,
    Compare,
    Key,
    Auto,
    Action,
    Pattern,
    Exec,
    Logfile,
    DoLocal,
    DoLocalOnly,
    Prefix,
    On,
    LockTimeout,
    Tempdir,
    BackupDirectory,
    BackupGenerations,
    BackupKeep,
    NoCygwinLowercase,
}

impl Keyword {
    const ALL: [Keyword; 24] = [
        Keyword::Nossl,
        Keyword::Ignore,
        Keyword::Database,
        Keyword::Group,
        Keyword::Host,
        Keyword::Exclude,
        Keyword::Include,
        Keyword::Compare,
        Keyword::Key,
        Keyword::Auto,
        Keyword::Action,
        Keyword::Pattern,
        Keyword::Exec,
        Keyword::Logfile,
        Keyword::DoLocal,
        Keyword::DoLocalOnly,
        Keyword::Prefix,
        Keyword::On,
        Keyword::LockTimeout,
        Keyword::Tempdir,
        Keyword::BackupDirectory,
        Keyword::BackupGenerations,
        Keyword::BackupKeep,
        Keyword::NoCygwinLowercase,
    ];

    /// The keyword spelled exactly `word`, if any.
    pub(crate) fn from_word(word: &str) -> Option<Keyword> {
        Keyword::ALL.into_iter().find(|k| k.as_str() == word)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Keyword::Nossl => "nossl",
            Keyword::Ignore => "ignore",
            Keyword::Database => "database",
            Keyword::Group => "group",
            Keyword::Host => "host",
            Keyword::Exclude => "exclude",
            Keyword::Include => "include",
            Keyword::Compare => "compare",
            Keyword::Key => "key",
            Keyword::Auto => "auto",
            Keyword::Action => "action",
            Keyword::Pattern => "pattern",
            Keyword::Exec => "exec",
            Keyword::Logfile => "logfile",
            Keyword::DoLocal => "do-local",
            Keyword::DoLocalOnly => "do-local-only",
            Keyword::Prefix => "prefix",
            Keyword::On => "on",
            Keyword::LockTimeout => "lock-timeout",
            Keyword::Tempdir => "tempdir",
            Keyword::BackupDirectory => "backup-directory",
            Keyword::BackupGenerations => "backup-generations",
            Keyword::BackupKeep => "backup-keep",
            Keyword::NoCygwinLowercase => "no-cygwin-lowercase",
        }
    }
}

/// What a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// An unquoted string.
    Word(String),
    /// A quoted string, without its quotes.
    Quoted(String),
    Keyword(Keyword),
    BlockBegin,
    BlockEnd,
    ParenOpen,
    ParenClose,
    Semicolon,
    Colon,
    At,
    /// The end of the main file (included files end without one).
    Eof,
}

/// A token and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) kind: TokenKind,
    pub(crate) location: Location,
}

impl Token {
    /// The token's text if it is a string (quoted or not).
    pub(crate) fn string(&self) -> Option<&str> {
        match &self.kind {
            TokenKind::Word(s) | TokenKind::Quoted(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for TokenKind {
    /// How a token is named in "found ..." parts of error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenKind::Word(s) | TokenKind::Quoted(s) => write!(f, "{s:?}"),
            TokenKind::Keyword(k) => write!(f, "keyword \"{}\"", k.as_str()),
            TokenKind::BlockBegin => f.write_str("'{'"),
            TokenKind::BlockEnd => f.write_str("'}'"),
            TokenKind::ParenOpen => f.write_str("'('"),
            TokenKind::ParenClose => f.write_str("')'"),
            TokenKind::Semicolon => f.write_str("';'"),
            TokenKind::Colon => f.write_str("':'"),
            TokenKind::At => f.write_str("'@'"),
            TokenKind::Eof => f.write_str("end of file"),
        }
    }
}

/// State shared by the main file and the files it includes.
#[derive(Debug, Default)]
pub(crate) struct Includes {
    /// The files being tokenized, outermost first, as canonical paths when
    /// they can be had (for cycle detection) and as named otherwise.
    stack: Vec<PathBuf>,
    /// Every file read, in the order they were opened.
    pub(crate) files: Vec<PathBuf>,
}

/// Tokenizes the main config file `src`, named `file`, following `config`
/// includes, and appends a final [`TokenKind::Eof`].
pub(crate) fn tokenize_main(src: &str, file: &Path, includes: &mut Includes) -> Result<Vec<Token>, ConfigError> {
    let mut out = Vec::new();
    includes.files.push(file.to_path_buf());
    includes.stack.push(identity(file));
    let end = Lexer::new(src, file).run(includes, &mut out)?;
    includes.stack.pop();
    out.push(Token { kind: TokenKind::Eof, location: end });
    Ok(out)
}

/// The path used to recognise a file that includes itself.
fn identity(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Characters that end a word (besides the end of input). Note that only
/// these four characters count as white space, as in csync2.
fn is_delimiter(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n' | '@' | ';' | '(' | ')' | '#' | '"')
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    line: u32,
    column: u32,
    file: &'a Path,
}

impl<'a> Lexer<'a> {
    fn new(src: &str, file: &'a Path) -> Self {
        Lexer { chars: src.chars().collect(), pos: 0, line: 1, column: 1, file }
    }

    fn location(&self) -> Location {
        Location { file: self.file.to_path_buf(), line: self.line, column: self.column }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    /// Tokenizes the whole input into `out`; returns the location of the
    /// end of the input.
    fn run(mut self, includes: &mut Includes, out: &mut Vec<Token>) -> Result<Location, ConfigError> {
        while let Some(c) = self.peek() {
            let location = self.location();
            let kind = match c {
                _ if is_space(c) => {
                    self.bump();
                    continue;
                }
                '#' => {
                    while self.peek().is_some_and(|c| c != '\n' && c != '\r') {
                        self.bump();
                    }
                    continue;
                }
                '"' => {
                    self.bump();
                    let mut text = String::new();
                    loop {
                        match self.bump() {
                            Some('"') => break,
                            Some(c) => text.push(c),
                            None => {
                                return Err(ConfigError::Syntax {
                                    location,
                                    expected: "a closing '\"' for this quoted string".into(),
                                    found: "end of file".into(),
                                });
                            }
                        }
                    }
                    // csync2's scanner returns no token for `""`.
                    if text.is_empty() {
                        continue;
                    }
                    TokenKind::Quoted(text)
                }
                '(' => {
                    self.bump();
                    TokenKind::ParenOpen
                }
                ')' => {
                    self.bump();
                    TokenKind::ParenClose
                }
                ';' => {
                    self.bump();
                    TokenKind::Semicolon
                }
                '@' => {
                    self.bump();
                    TokenKind::At
                }
                _ => {
                    // The longest run of word characters, less any trailing
                    // colons; a run of colons alone is a single ':' token.
                    let run_end = self.chars[self.pos..]
                        .iter()
                        .position(|&c| is_delimiter(c))
                        .map_or(self.chars.len(), |n| self.pos + n);
                    let mut word_end = run_end;
                    while word_end > self.pos && self.chars[word_end - 1] == ':' {
                        word_end -= 1;
                    }
                    if word_end == self.pos {
                        self.bump();
                        TokenKind::Colon
                    } else {
                        let word: String = self.chars[self.pos..word_end].iter().collect();
                        while self.pos < word_end {
                            self.bump();
                        }
                        match word.as_str() {
                            "{" => TokenKind::BlockBegin,
                            "}" => TokenKind::BlockEnd,
                            "config" => {
                                self.include(includes, out)?;
                                continue;
                            }
                            _ => match Keyword::from_word(&word) {
                                Some(k) => TokenKind::Keyword(k),
                                None => TokenKind::Word(word),
                            },
                        }
                    }
                }
            };
            out.push(Token { kind, location });
        }
        Ok(self.location())
    }

    /// Handles the rest of a `config FILE...;` statement: every name up to
    /// the `;` is a file whose tokens are spliced in here.
    fn include(&mut self, includes: &mut Includes, out: &mut Vec<Token>) -> Result<(), ConfigError> {
        loop {
            while self.peek().is_some_and(is_space) {
                self.bump();
            }
            let location = self.location();
            match self.peek() {
                None => {
                    return Err(ConfigError::Syntax {
                        location,
                        expected: "a file name or ';' to end the config statement".into(),
                        found: "end of file".into(),
                    });
                }
                Some(';') => {
                    self.bump();
                    return Ok(());
                }
                Some(_) => {}
            }
            let mut name = String::new();
            while let Some(c) = self.peek().filter(|&c| !is_space(c) && c != ';') {
                name.push(c);
                self.bump();
            }
            let path = match self.file.parent() {
                Some(dir) if Path::new(&name).is_relative() => dir.join(&name),
                _ => PathBuf::from(&name),
            };
            include_file(&path, location, includes, out)?;
        }
    }
}

/// Tokenizes the included file `path` (named at `location`) into `out`.
fn include_file(
    path: &Path,
    location: Location,
    includes: &mut Includes,
    out: &mut Vec<Token>,
) -> Result<(), ConfigError> {
    let id = identity(path);
    if let Some(start) = includes.stack.iter().position(|p| *p == id) {
        let mut chain: Vec<PathBuf> = includes.stack[start..].to_vec();
        chain.push(id);
        return Err(ConfigError::IncludeCycle { location, chain });
    }
    if includes.stack.len() > MAX_INCLUDE_DEPTH {
        return Err(ConfigError::IncludeTooDeep { location, path: path.to_path_buf() });
    }
    let src = read_config_file(path).map_err(|e| match e {
        ReadFailure::File(TrustError::Io { source, .. }) => {
            ConfigError::ReadInclude { location: location.clone(), path: path.to_path_buf(), source }
        }
        ReadFailure::File(source) => ConfigError::UnsafeInclude { location: location.clone(), source },
        ReadFailure::NotUtf8(location) => ConfigError::NotUtf8 { location },
    })?;
    includes.files.push(path.to_path_buf());
    includes.stack.push(id);
    Lexer::new(&src, path).run(includes, out)?;
    includes.stack.pop();
    Ok(())
}

/// Why a config file could not be read as text.
pub(crate) enum ReadFailure {
    /// Unreadable, or refused by [`crate::trusted`]'s checks.
    File(TrustError),
    /// The location of the first byte that is not UTF-8.
    NotUtf8(Location),
}

/// Reads a config file as UTF-8 text: a regular file of at most
/// [`crate::trusted::MAX_CONFIG_BYTES`] that only its owner (this user or
/// root) may change, since it names the commands actions run.
pub(crate) fn read_config_file(path: &Path) -> Result<String, ReadFailure> {
    let bytes = crate::trusted::read(path, Kind::Config).map_err(ReadFailure::File)?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        // The prefix is valid UTF-8 by construction.
        let text = std::str::from_utf8(valid).unwrap_or_default();
        let line = text.matches('\n').count() as u32 + 1;
        let column = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
        ReadFailure::NotUtf8(Location { file: path.to_path_buf(), line, column })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<TokenKind> {
        let mut inc = Includes::default();
        tokenize_main(src, Path::new("t.cfg"), &mut inc).unwrap().into_iter().map(|t| t.kind).collect()
    }

    fn w(s: &str) -> TokenKind {
        TokenKind::Word(s.into())
    }

    #[test]
    fn words_keywords_and_punctuation() {
        assert_eq!(
            kinds("group g { host a@b (c); }"),
            vec![
                TokenKind::Keyword(Keyword::Group),
                w("g"),
                TokenKind::BlockBegin,
                TokenKind::Keyword(Keyword::Host),
                w("a"),
                TokenKind::At,
                w("b"),
                TokenKind::ParenOpen,
                w("c"),
                TokenKind::ParenClose,
                TokenKind::Semicolon,
                TokenKind::BlockEnd,
                TokenKind::Eof,
            ]
        );
    }

    #[test]
    fn braces_are_word_characters_unless_alone() {
        assert_eq!(kinds("g{"), vec![w("g{"), TokenKind::Eof]);
        assert_eq!(kinds("{}"), vec![w("{}"), TokenKind::Eof]);
        assert_eq!(
            kinds("{;}"),
            vec![TokenKind::BlockBegin, TokenKind::Semicolon, TokenKind::BlockEnd, TokenKind::Eof]
        );
        assert_eq!(kinds("/srv/{a,b}"), vec![w("/srv/{a,b}"), TokenKind::Eof]);
    }

    #[test]
    fn words_never_end_in_a_colon() {
        assert_eq!(kinds("host*: /p"), vec![w("host*"), TokenKind::Colon, w("/p"), TokenKind::Eof]);
        assert_eq!(kinds("a:b"), vec![w("a:b"), TokenKind::Eof]);
        assert_eq!(kinds("::"), vec![TokenKind::Colon, TokenKind::Colon, TokenKind::Eof]);
        assert_eq!(kinds("::1"), vec![w("::1"), TokenKind::Eof]);
        assert_eq!(kinds("[::1]:9"), vec![w("[::1]:9"), TokenKind::Eof]);
    }

    #[test]
    fn keywords_are_whole_words_only() {
        assert_eq!(kinds("hostname"), vec![w("hostname"), TokenKind::Eof]);
        assert_eq!(
            kinds("do-local do-local-only"),
            vec![TokenKind::Keyword(Keyword::DoLocal), TokenKind::Keyword(Keyword::DoLocalOnly), TokenKind::Eof]
        );
        assert_eq!(kinds("host:"), vec![TokenKind::Keyword(Keyword::Host), TokenKind::Colon, TokenKind::Eof]);
    }

    #[test]
    fn quoted_strings_and_comments() {
        assert_eq!(
            kinds("exec \"a # b; c\" # comment\nx"),
            vec![TokenKind::Keyword(Keyword::Exec), TokenKind::Quoted("a # b; c".into()), w("x"), TokenKind::Eof]
        );
        assert_eq!(kinds("\"host\""), vec![TokenKind::Quoted("host".into()), TokenKind::Eof]);
        assert_eq!(kinds("a\"b\"c"), vec![w("a"), TokenKind::Quoted("b".into()), w("c"), TokenKind::Eof]);
        assert_eq!(kinds("a#b"), vec![w("a"), TokenKind::Eof]);
        // csync2 yields nothing for an empty quoted string.
        assert_eq!(kinds("\"\" x"), vec![w("x"), TokenKind::Eof]);
        assert_eq!(kinds("\"multi\nline\""), vec![TokenKind::Quoted("multi\nline".into()), TokenKind::Eof]);
    }

    #[test]
    fn unterminated_quote_is_an_error_at_the_quote() {
        let mut inc = Includes::default();
        let err = tokenize_main("x\n  \"abc", Path::new("t.cfg"), &mut inc).unwrap_err();
        assert_eq!(err.to_string(), "t.cfg:2:3: expected a closing '\"' for this quoted string, found end of file");
    }

    #[test]
    fn locations_count_lines_and_columns_from_one() {
        let mut inc = Includes::default();
        let toks = tokenize_main("a\n\tbb  c", Path::new("f"), &mut inc).unwrap();
        let locs: Vec<(u32, u32)> = toks.iter().map(|t| (t.location.line, t.location.column)).collect();
        assert_eq!(locs, vec![(1, 1), (2, 2), (2, 6), (2, 7)]);
    }

    #[test]
    fn config_include_needs_a_semicolon() {
        let mut inc = Includes::default();
        let err = tokenize_main("config", Path::new("t.cfg"), &mut inc).unwrap_err();
        assert!(err.to_string().contains("expected a file name or ';'"), "{err}");
        // `config;` includes nothing.
        assert_eq!(kinds("config; x"), vec![w("x"), TokenKind::Eof]);
    }
}
