// {{name}}: refuses the recipients listed in the config's `deny` (`550 5.1.1`) and adds
// `X-Checked-By: {{name}}` to every message. A starting point: see docs/languages.md of
// mailgate for what else a plugin can do.
import { exportPlugin, DataOutcome, RcptOutcome, formatAddress } from 'mailgate-plugin-sdk';

// Types for editors and `mailgate-plugin-js check` (TypeScript's checkJs).
/** @typedef {import('mailgate-plugin-sdk').Config} Config */
/** @typedef {import('mailgate-plugin-sdk').SessionInfo} SessionInfo */
/** @typedef {import('mailgate-plugin-sdk').Transaction} Transaction */
/** @typedef {import('mailgate-plugin-sdk').Recipient} Recipient */
/** @typedef {import('mailgate-plugin-sdk').Message} Message */

class {{Type}} {
  /** @param {Config} config */
  constructor(config) {
    config.denyUnknown(['deny']);
    this.deny = new Set(config.list('deny').map((a) => a.toLowerCase()));
  }

  /** @param {SessionInfo} session @param {Transaction} txn @param {Recipient} rcpt */
  onRcptTo(session, txn, rcpt) {
    if (this.deny.has(formatAddress(rcpt.address).toLowerCase())) {
      return RcptOutcome.reject(550, '5.1.1', 'No such user here');
    }
    return RcptOutcome.continue();
  }

  /** @param {SessionInfo} session @param {Transaction} txn @param {Message} msg */
  onData(session, txn, msg) {
    return DataOutcome.continue().addHeader('X-Checked-By', '{{name}}');
  }
}

export const hooks = exportPlugin({{Type}});
