// The example policy in JavaScript (the same as ../rust and ../python):
// - RCPT TO a recipient on the `deny` list (`local@domain`, or `@domain` for a whole
//   domain; any case) is refused with `550 5.1.1 No such user here`;
// - at DATA, a Subject matching the `subject_pattern` regular expression (case-insensitive)
//   gets the tag `tag` (default `subject-match`) and the score entry `SUBJECT_MATCH` of
//   `score` points (default 5);
// - every message gets the header `header` (default `X-Policy`): `js; subject=match` or
//   `js; subject=clean`.
import { exportPlugin, ConfigError, DataOutcome, RcptOutcome, formatAddress } from 'mailgate-plugin-sdk';

// Types for editors and `mailgate-plugin-js check` (TypeScript's checkJs).
/** @typedef {import('mailgate-plugin-sdk').Config} Config */
/** @typedef {import('mailgate-plugin-sdk').SessionInfo} SessionInfo */
/** @typedef {import('mailgate-plugin-sdk').Transaction} Transaction */
/** @typedef {import('mailgate-plugin-sdk').Recipient} Recipient */
/** @typedef {import('mailgate-plugin-sdk').Message} Message */

class Policy {
  /** @param {Config} config */
  constructor(config) {
    config.denyUnknown(['deny', 'subject_pattern', 'tag', 'score', 'header']);
    this.deny = new Set(config.list('deny').map((a) => a.toLowerCase()));
    const pattern = config.str('subject_pattern');
    try {
      this.subject = pattern === undefined ? undefined : new RegExp(pattern, 'i');
    } catch (e) {
      throw new ConfigError('subject_pattern', e.message);
    }
    this.tag = config.str('tag', 'subject-match');
    this.score = config.number('score', 5);
    this.header = config.str('header', 'X-Policy');
  }

  /** @param {SessionInfo} session @param {Transaction} txn @param {Recipient} rcpt */
  onRcptTo(session, txn, rcpt) {
    const address = formatAddress(rcpt.address).toLowerCase();
    if (this.deny.has(address) || this.deny.has(`@${rcpt.address.domain}`)) {
      return RcptOutcome.reject(550, '5.1.1', 'No such user here').withReason(
        `${address} is on the deny list`,
      );
    }
    return RcptOutcome.continue();
  }

  /** @param {SessionInfo} session @param {Transaction} txn @param {Message} msg */
  onData(session, txn, msg) {
    const subject = msg.headerDecoded('Subject')[0] ?? '';
    if (this.subject?.test(subject)) {
      return DataOutcome.continue()
        .withTag(this.tag)
        .withScore('SUBJECT_MATCH', this.score)
        .withReason(`subject matches ${this.subject.source}`)
        .addHeader(this.header, 'js; subject=match');
    }
    return DataOutcome.continue().addHeader(this.header, 'js; subject=clean');
  }
}

export const hooks = exportPlugin(Policy);
