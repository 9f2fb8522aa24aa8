//! SMTP command lines: parsing one CRLF-stripped line into a [`Command`].
//!
//! The parser is strict about structure (verb, one space, arguments) and returns a
//! [`Reply`]-ready [`CommandError`] for anything it refuses. Addresses are parsed by
//! [`super::address`].

use super::address::{self, Path};
use super::envelope::{BodyType, MailParams};

/// One parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `EHLO name`
    Ehlo(String),
    /// `HELO name`
    Helo(String),
    /// `MAIL FROM:<path> params`
    Mail(Path, MailParams),
    /// `RCPT TO:<path>`
    Rcpt(Path),
    /// `DATA`
    Data,
    /// `BDAT size [LAST]`
    Bdat(u64, bool),
    /// `RSET`
    Rset,
    /// `NOOP [text]`
    Noop,
    /// `QUIT`
    Quit,
    /// `VRFY text`
    Vrfy,
    /// `HELP [topic]`
    Help,
    /// `STARTTLS`
    StartTls,
    /// Known but not implemented here (EXPN, TURN, ETRN, AUTH, ...).
    NotImplemented(&'static str),
}

/// Why a command line was refused, with the reply it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// Unknown verb: 500 5.5.2.
    Unknown,
    /// Bad arguments: 501 5.5.4 (or a more precise code per command).
    Syntax(&'static str, &'static str),
    /// Unsupported parameter: 555 5.5.4.
    Param,
    /// BDAT whose size cannot be parsed: the chunk boundary is lost.
    BadChunkSize,
}

fn split_verb(line: &str) -> (&str, &str) {
    match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    }
}

/// Parses `line` (without CRLF; already checked for CR, LF and NUL).
pub fn parse(line: &str) -> Result<Command, CommandError> {
    let (verb, rest) = split_verb(line);
    let verb = verb.to_ascii_uppercase();
    let no_args = |c: Command| {
        if rest.trim().is_empty() {
            Ok(c)
        } else {
            Err(CommandError::Syntax(
                "5.5.4",
                "Syntax error: no arguments allowed",
            ))
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" => {
            let name = rest.trim();
            if name.is_empty() {
                return Err(CommandError::Syntax(
                    "5.5.4",
                    "Syntax error: domain name required",
                ));
            }
            if name.contains(' ') || !name.chars().all(|c| c.is_ascii_graphic() || !c.is_ascii()) {
                return Err(CommandError::Syntax(
                    "5.5.4",
                    "Syntax error: invalid domain name",
                ));
            }
            Ok(if verb == "EHLO" {
                Command::Ehlo(name.into())
            } else {
                Command::Helo(name.into())
            })
        }
        "MAIL" => {
            let Some(arg) = strip_prefix_ci(rest, "FROM:") else {
                return Err(CommandError::Syntax("5.5.4", "Syntax: MAIL FROM:<address>"));
            };
            let (path, params) = address::split_path(arg.strip_prefix(' ').unwrap_or(arg))
                .ok_or(CommandError::Syntax("5.1.7", "Bad sender address syntax"))?;
            let path = address::parse_reverse_path(path)
                .map_err(|_| CommandError::Syntax("5.1.7", "Bad sender address syntax"))?;
            Ok(Command::Mail(path, mail_params(params)?))
        }
        "RCPT" => {
            let Some(arg) = strip_prefix_ci(rest, "TO:") else {
                return Err(CommandError::Syntax("5.5.4", "Syntax: RCPT TO:<address>"));
            };
            let (path, params) = address::split_path(arg.strip_prefix(' ').unwrap_or(arg)).ok_or(
                CommandError::Syntax("5.1.3", "Bad recipient address syntax"),
            )?;
            let path = address::parse_forward_path(path)
                .map_err(|_| CommandError::Syntax("5.1.3", "Bad recipient address syntax"))?;
            if !params.trim().is_empty() {
                return Err(CommandError::Param);
            }
            Ok(Command::Rcpt(path))
        }
        "DATA" => no_args(Command::Data),
        "BDAT" => {
            let mut it = rest.split(' ');
            let size = it.next().unwrap_or("");
            if size.is_empty() || size.len() > 18 || !size.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CommandError::BadChunkSize);
            }
            let size: u64 = size.parse().map_err(|_| CommandError::BadChunkSize)?;
            let last = match it.next() {
                None => false,
                Some(l) if l.eq_ignore_ascii_case("LAST") => true,
                Some(_) => return Err(CommandError::BadChunkSize),
            };
            if it.next().is_some() {
                return Err(CommandError::BadChunkSize);
            }
            Ok(Command::Bdat(size, last))
        }
        "RSET" => no_args(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit),
        "VRFY" => {
            if rest.trim().is_empty() {
                Err(CommandError::Syntax("5.5.4", "Syntax: VRFY <address>"))
            } else {
                Ok(Command::Vrfy)
            }
        }
        "HELP" => Ok(Command::Help),
        "STARTTLS" => no_args(Command::StartTls),
        "EXPN" => Ok(Command::NotImplemented("EXPN")),
        "TURN" => Ok(Command::NotImplemented("TURN")),
        "ETRN" => Ok(Command::NotImplemented("ETRN")),
        "AUTH" => Ok(Command::NotImplemented("AUTH")),
        "ATRN" => Ok(Command::NotImplemented("ATRN")),
        "SEND" | "SOML" | "SAML" => Ok(Command::NotImplemented("SEND")),
        _ => Err(CommandError::Unknown),
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

fn mail_params(params: &str) -> Result<MailParams, CommandError> {
    let mut out = MailParams::default();
    for p in params.split(' ').filter(|p| !p.is_empty()) {
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        };
        match (k.to_ascii_uppercase().as_str(), v) {
            ("SIZE", Some(v))
                if !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) =>
            {
                out.size = Some(v.parse().unwrap_or(u64::MAX));
            }
            ("SIZE", _) => {
                return Err(CommandError::Syntax(
                    "5.5.4",
                    "Syntax error in SIZE parameter",
                ));
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => out.body = BodyType::SevenBit,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                out.body = BodyType::EightBitMime
            }
            ("BODY", _) => return Err(CommandError::Param),
            ("SMTPUTF8", None) => out.smtputf8 = true,
            _ => return Err(CommandError::Param),
        }
    }
    Ok(out)
}
