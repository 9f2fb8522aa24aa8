"""{{name}}: refuses the recipients listed in the config's ``deny`` (``550 5.1.1``) and adds
``X-Checked-By: {{name}}`` to every message. A starting point: see docs/languages.md of
mailgate for what else a plugin can do."""

from mailgate_plugin import Config, DataOutcome, Plugin, RcptOutcome, export, format_address


class {{Type}}(Plugin):
    def __init__(self, config: Config) -> None:
        config.deny_unknown(["deny"])
        self.deny = {a.lower() for a in config.list("deny")}

    def on_rcpt_to(self, session, txn, rcpt):
        if format_address(rcpt.address).lower() in self.deny:
            return RcptOutcome.reject(550, "5.1.1", "No such user here")
        return RcptOutcome.continue_()

    def on_data(self, session, txn, msg):
        return DataOutcome.continue_().add_header("X-Checked-By", "{{name}}")


Hooks = export({{Type}})
