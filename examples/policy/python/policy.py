"""The example policy in Python (the same as ../rust and ../js):

- RCPT TO a recipient on the ``deny`` list (``local@domain``, or ``@domain`` for a whole
  domain; any case) is refused with ``550 5.1.1 No such user here``;
- at DATA, a Subject matching the ``subject_pattern`` regular expression (case-insensitive)
  gets the tag ``tag`` (default ``subject-match``) and the score entry ``SUBJECT_MATCH`` of
  ``score`` points (default 5);
- every message gets the header ``header`` (default ``X-Policy``): ``python; subject=match``
  or ``python; subject=clean``.
"""

import re

from mailgate_plugin import Config, ConfigError, DataOutcome, Plugin, RcptOutcome, export, format_address


class Policy(Plugin):
    def __init__(self, config: Config) -> None:
        config.deny_unknown(["deny", "subject_pattern", "tag", "score", "header"])
        self.deny = {a.lower() for a in config.list("deny")}
        pattern = config.get("subject_pattern")
        try:
            self.subject = None if pattern is None else re.compile(pattern, re.IGNORECASE)
        except re.error as e:
            raise ConfigError("subject_pattern", str(e)) from None
        self.tag = config.str("tag", "subject-match")
        self.score = config.float("score", 5.0)
        self.header = config.str("header", "X-Policy")

    def on_rcpt_to(self, session, txn, rcpt):
        address = format_address(rcpt.address).lower()
        if address in self.deny or f"@{rcpt.address.domain}" in self.deny:
            return RcptOutcome.reject(550, "5.1.1", "No such user here").with_reason(
                f"{address} is on the deny list"
            )
        return RcptOutcome.continue_()

    def on_data(self, session, txn, msg):
        subjects = msg.header_decoded("Subject")
        subject = subjects[0] if subjects else ""
        if self.subject is not None and self.subject.search(subject):
            return (
                DataOutcome.continue_()
                .with_tag(self.tag)
                .with_score("SUBJECT_MATCH", self.score)
                .with_reason(f"subject matches {self.subject.pattern}")
                .add_header(self.header, "python; subject=match")
            )
        return DataOutcome.continue_().add_header(self.header, "python; subject=clean")


Hooks = export(Policy)
