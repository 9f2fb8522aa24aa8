// {{name}}: refuses the recipients listed in the config's `deny` (`550 5.1.1`) and adds
// `X-Checked-By: {{name}}` to every message. A starting point: see docs/languages.md of
// mailgate for what else a plugin can do.
import { exportPlugin, DataOutcome, RcptOutcome, formatAddress } from 'mailgate-plugin-sdk';

class {{Type}} {
  constructor(config) {
    config.denyUnknown(['deny']);
    this.deny = new Set(config.list('deny').map((a) => a.toLowerCase()));
  }

  onRcptTo(session, txn, rcpt) {
    if (this.deny.has(formatAddress(rcpt.address).toLowerCase())) {
      return RcptOutcome.reject(550, '5.1.1', 'No such user here');
    }
    return RcptOutcome.continue();
  }

  onData(session, txn, msg) {
    return DataOutcome.continue().addHeader('X-Checked-By', '{{name}}');
  }
}

export const hooks = exportPlugin({{Type}});
