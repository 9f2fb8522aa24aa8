//! The commands of a session: HELO/EHLO, MAIL, RCPT, DATA/BDAT set-up, RSET, NOOP,
//! QUIT, VRFY, HELP, STARTTLS, and the checks each makes before its hook.

use super::data::Content;
use super::{Hook, Phase, Session, Step};
use crate::smtp::address::{Path, mailbox_key};
use crate::smtp::command::{Command, CommandError};
use crate::smtp::envelope::MailParams;
use crate::smtp::reply::Reply;

impl Session {
    pub(super) fn run(&mut self, parsed: Result<Command, CommandError>) {
        let cmd = match parsed {
            Ok(c) => c,
            Err(CommandError::Unknown) => {
                return self.send(Reply::new(500, "5.5.2", "Command unrecognized"));
            }
            Err(CommandError::Syntax(enh, text)) => return self.send(Reply::new(501, enh, text)),
            Err(CommandError::Param) => {
                return self.send(Reply::new(555, "5.5.4", "Unsupported parameter"));
            }
            Err(CommandError::BadChunkSize) => {
                // The chunk boundary is lost: nothing after this can be read as a command.
                self.send(Reply::new(501, "5.5.4", "Syntax: BDAT <size> [LAST]"));
                let host = self.cfg.hostname.clone();
                self.send(Reply::new(
                    421,
                    "4.5.0",
                    format!("{host} Error: BDAT chunk boundary lost, closing"),
                ));
                return;
            }
        };
        if matches!(
            cmd,
            Command::Ehlo(_)
                | Command::Helo(_)
                | Command::Rset
                | Command::Noop
                | Command::Vrfy
                | Command::Help
        ) {
            self.junk += 1;
            if self.junk > self.cfg.max_junk_commands {
                // Past the junk limit each one counts as an error (Postfix's
                // smtpd_junk_command_limit): a flood ends at max_errors.
                self.count_error();
                if self.closing {
                    return;
                }
            }
        }
        match cmd {
            Command::Ehlo(name) => {
                self.reset_txn();
                self.pause(Hook::Helo {
                    name,
                    extended: true,
                });
            }
            Command::Helo(name) => {
                self.reset_txn();
                self.pause(Hook::Helo {
                    name,
                    extended: false,
                });
            }
            Command::Mail(path, params) => self.mail(path, params),
            Command::Rcpt(path) => self.rcpt(path),
            Command::Data => {
                if self.bdat_used {
                    return self.send(Reply::new(
                        503,
                        "5.5.1",
                        "DATA after BDAT in one transaction",
                    ));
                }
                if let Some(r) = self.data_precheck() {
                    return self.send(r);
                }
                self.content = Content {
                    prev_crlf: true,
                    ..Content::default()
                };
                self.data.clear();
                self.send(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"));
                self.phase = Phase::Data;
            }
            Command::Bdat(size, last) => {
                let error = if !self.facts.esmtp() {
                    Some(Reply::new(503, "5.5.1", "Send EHLO first"))
                } else {
                    self.data_precheck()
                };
                if error.is_none() && !self.bdat_used {
                    self.bdat_used = true;
                    self.data.clear();
                    self.content = Content::default();
                }
                self.phase = Phase::Bdat {
                    size,
                    remaining: size,
                    last,
                    error,
                };
            }
            Command::Rset => {
                self.reset_txn();
                self.send(Reply::new(250, "2.0.0", "Ok"));
            }
            Command::Noop => self.send(Reply::new(250, "2.0.0", "Ok")),
            Command::Quit => {
                let host = self.cfg.hostname.clone();
                self.send(Reply::new(221, "2.0.0", format!("{host} Bye")));
                self.closing = true;
            }
            Command::Vrfy => self.send(Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Help => self.send(Reply::new(
                214,
                "2.0.0",
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS",
            )),
            Command::StartTls => {
                if self.facts.tls.is_some() {
                    return self.send(Reply::new(503, "5.5.1", "TLS already active"));
                }
                if !self.cfg.starttls {
                    return self.send(Reply::new(502, "5.5.1", "STARTTLS not available"));
                }
                if !self.facts.esmtp() {
                    return self.send(Reply::new(503, "5.5.1", "Send EHLO first"));
                }
                self.send(Reply::new(220, "2.0.0", "Ready to start TLS"));
                // CVE-2011-0411: nothing pipelined behind STARTTLS survives the handshake.
                self.input.clear();
                self.phase = Phase::StartTls;
                self.next = Some(Step::StartTls);
            }
            Command::NotImplemented(_) => {
                self.send(Reply::new(502, "5.5.1", "Command not implemented"))
            }
        }
    }

    fn data_precheck(&self) -> Option<Reply> {
        if self.facts.helo.is_none() {
            return Some(Reply::new(503, "5.5.1", "Send HELO/EHLO first"));
        }
        if !self.in_txn {
            return Some(Reply::new(503, "5.5.1", "Need MAIL command"));
        }
        if self.envelope.rcpt_to.is_empty() {
            return Some(Reply::new(554, "5.5.1", "No valid recipients"));
        }
        None
    }

    fn mail(&mut self, path: Path, params: MailParams) {
        if self.facts.helo.is_none() {
            return self.send(Reply::new(503, "5.5.1", "Send HELO/EHLO first"));
        }
        if self.in_txn {
            return self.send(Reply::new(503, "5.5.1", "Nested MAIL command"));
        }
        if self.bdat_used {
            return self.send(Reply::new(503, "5.5.1", "BDAT transfer in progress"));
        }
        if !self.facts.esmtp() && params != MailParams::default() {
            return self.send(Reply::new(555, "5.5.4", "MAIL parameters need EHLO"));
        }
        if params
            .size
            .is_some_and(|s| s > self.cfg.max_message_size as u64)
        {
            return self.send(Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ));
        }
        let address = match path {
            Path::Null => String::new(),
            Path::Postmaster => {
                return self.send(Reply::new(501, "5.1.7", "Bad sender address syntax"));
            }
            Path::Mailbox(m) => {
                if !m.is_ascii() && !params.smtputf8 {
                    return self.send(Reply::new(553, "5.6.7", "Non-ASCII address needs SMTPUTF8"));
                }
                m.address()
            }
        };
        self.pause(Hook::MailFrom { address, params });
    }

    fn rcpt(&mut self, path: Path) {
        if !self.in_txn {
            return self.send(Reply::new(503, "5.5.1", "Need MAIL command"));
        }
        if self.bdat_used {
            return self.send(Reply::new(503, "5.5.1", "BDAT transfer in progress"));
        }
        let address = match path {
            Path::Null => {
                return self.send(Reply::new(501, "5.1.3", "Bad recipient address syntax"));
            }
            Path::Postmaster => {
                let domain = self
                    .cfg
                    .local_domains
                    .first()
                    .cloned()
                    .unwrap_or_else(|| self.cfg.hostname.clone());
                format!("postmaster@{domain}")
            }
            Path::Mailbox(m) => {
                if !m.is_ascii() && !self.envelope.params.smtputf8 {
                    return self.send(Reply::new(553, "5.6.7", "Non-ASCII address needs SMTPUTF8"));
                }
                if m.has_routing() {
                    return self.send(Reply::new(
                        550,
                        "5.7.1",
                        "Relaying denied: routing in addresses is not accepted",
                    ));
                }
                let local =
                    !m.is_literal() && self.cfg.local_domains.iter().any(|d| *d == m.domain_key());
                if !local && !self.facts.trusted {
                    return self.send(Reply::new(550, "5.7.1", "Relaying denied"));
                }
                m.address()
            }
        };
        // The same mailbox twice is one recipient: accepted again, delivered once.
        let key = mailbox_key(&address, self.cfg.fold_local_part);
        let fold = self.cfg.fold_local_part;
        if self
            .envelope
            .rcpt_to
            .iter()
            .any(|r| mailbox_key(r, fold) == key)
        {
            return self.send(Reply::new(
                250,
                "2.1.5",
                format!("Recipient <{address}> ok (duplicate)"),
            ));
        }
        if self.envelope.rcpt_to.len() >= self.cfg.max_recipients {
            // RFC 5321 4.5.3.1.10: refuse the extra recipients in order and keep the
            // transaction; only a client that goes on far past the limit is in error.
            let reply = Reply::new(452, "4.5.3", "Too many recipients");
            self.overshoot += 1;
            return if self.overshoot > self.cfg.max_recipient_overshoot {
                self.send(reply)
            } else {
                self.send_uncounted(reply)
            };
        }
        self.pause(Hook::RcptTo { address });
    }
}
