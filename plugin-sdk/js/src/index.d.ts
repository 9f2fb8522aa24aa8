// TypeScript declarations of mailgate-plugin-sdk (JavaScript). The WIT types come from
// ../types/, generated from wit/ by `npm ci` (or `mailgate-plugin-js types`).
/// <reference path="../types/unversioned.d.ts" />

import type {
  Address,
  DataVerdict,
  HeaderEdit,
  HeloInfo,
  IpAddress,
  MailParams,
  Marks,
  RecipientEdit,
  RecipientRoute,
  Reply as WitReply,
  ReversePath,
  Route as WitRoute,
  SessionInfo,
  Transaction,
  Recipient,
  Verdict,
} from 'mailgate:plugin/types';
import type { Message } from 'mailgate:plugin/message';
import type { DeliveryInfo, PluginInfo } from 'mailgate:plugin/hooks';
import type { Level } from 'mailgate:plugin/log';
import type { MxRecord } from 'mailgate:plugin/dns';

export type {
  Address,
  DeliveryInfo,
  HeloInfo,
  IpAddress,
  MailParams,
  Message,
  Recipient,
  ReversePath,
  SessionInfo,
  Transaction,
};

/** The `sdk` field of the manifest. */
export const SDK: string;
/** The `auth-results` capability as componentize-js generates it. */
export const authResults: typeof import('mailgate:plugin/auth-results');
/** The `verify` capability as componentize-js generates it. */
export const verify: typeof import('mailgate:plugin/verify');

/** An SMTP reply: code, enhanced status (`"5.1.1"` or `""`), text or lines. */
export function Reply(code: number, enhanced: string, text: string | string[]): WitReply;

/** Outcome of `onConnect`, `onHelo`, `onMailFrom`. */
export class Outcome {
  constructor(verdict: Verdict);
  verdict: Verdict | DataVerdict;
  marks: Marks;
  static continue<T extends typeof Outcome>(this: T): InstanceType<T>;
  static accept<T extends typeof Outcome>(this: T): InstanceType<T>;
  static reject<T extends typeof Outcome>(this: T, code: number, enhanced: string, text: string | string[]): InstanceType<T>;
  static tempfail<T extends typeof Outcome>(this: T, code: number, enhanced: string, text: string | string[]): InstanceType<T>;
  static disconnect<T extends typeof Outcome>(this: T, code: number, enhanced: string, text: string | string[]): InstanceType<T>;
  withScore(rule: string, points: number): this;
  withTag(tag: string): this;
  withReason(reason: string): this;
  toWit(): object;
}

/** Outcome of `onRcptTo`. */
export class RcptOutcome extends Outcome {
  recipientEdits: RecipientEdit[];
  addRecipient(address: string | Address): this;
  removeRecipient(address: string | Address): this;
  rewriteRecipient(original: string | Address, replacement: string | Address): this;
}

/** Outcome of `onData`. */
export class DataOutcome extends RcptOutcome {
  headerEdits: HeaderEdit[];
  static discard<T extends typeof DataOutcome>(this: T): InstanceType<T>;
  static quarantine<T extends typeof DataOutcome>(this: T, reason: string): InstanceType<T>;
  addHeader(name: string, value: string | number): this;
  prependHeader(name: string, value: string | number): this;
  removeHeader(name: string, occurrence?: number): this;
  replaceHeader(name: string, value: string | number, occurrence?: number): this;
}

/** Where one recipient goes. */
export const Route: {
  mx(): WitRoute;
  local(): WitRoute;
  discard(): WitRoute;
  relay(host: string, port?: number, tls?: 'opportunistic' | 'required' | 'disabled'): WitRoute;
  bounce(code: number, enhanced: string, text: string | string[]): WitRoute;
  defer(code: number, enhanced: string, text: string | string[]): WitRoute;
};

/** Outcome of `onDeliver`. */
export class DeliverOutcome {
  routes: RecipientRoute[];
  reason?: string;
  static none(): DeliverOutcome;
  route(recipient: string | Address, route: WitRoute): this;
  withReason(reason: string): this;
  toWit(): object;
}

export function formatAddress(address: Address | undefined): string;
export function parseAddress(text: string): Address;
export function ipToString(ip: IpAddress): string;
export function clientIp(session: SessionInfo): string;

/** A config value that is missing or does not parse (``config key `KEY`: MESSAGE``). */
export class ConfigError extends Error {
  constructor(key: string, message: string);
  key: string;
}

/** The plugin's config table (flattened key/value strings). */
export class Config {
  constructor(pairs: Array<[string, string]>);
  get(key: string): string | undefined;
  keys(): string[];
  str(key: string): string | undefined;
  str(key: string, fallback: string): string;
  require(key: string): string;
  int(key: string): number | undefined;
  int(key: string, fallback: number): number;
  number(key: string): number | undefined;
  number(key: string, fallback: number): number;
  bool(key: string): boolean | undefined;
  bool(key: string, fallback: boolean): boolean;
  list(key: string): string[];
  section(prefix: string): Config;
  denyUnknown(known: string[]): void;
}

type Fields = Record<string, string | number | boolean | bigint>;

export const log: {
  enabled(level: Level): boolean;
  log(level: Level, message: string, fields?: Fields): void;
  trace(message: string, fields?: Fields): void;
  debug(message: string, fields?: Fields): void;
  info(message: string, fields?: Fields): void;
  warn(message: string, fields?: Fields): void;
  error(message: string, fields?: Fields): void;
};

/** A capability call answered an error: `kind` is its WIT case (`denied`, `nxdomain`, ...). */
export class CapabilityError extends Error {
  kind: string;
  detail?: string;
}

export const clock: {
  nowMs(): number;
  now(): Date;
  monotonicNs(): bigint;
};

export const dns: {
  txt(name: string): string[];
  a(name: string): string[];
  aaaa(name: string): string[];
  mx(name: string): MxRecord[];
  ptr(ip: string | IpAddress): string[];
};

export const kv: {
  get(key: string): Uint8Array | undefined;
  getString(key: string): string | undefined;
  set(key: string, value: string | Uint8Array, ttlSecs?: number): void;
  setIfAbsent(key: string, value: string | Uint8Array, ttlSecs?: number): boolean;
  delete(key: string): boolean;
  increment(key: string, delta: number, ttlSecs?: number): number;
};

export const metrics: {
  counterAdd(name: string, labels: Fields | undefined, delta: number | bigint): void;
  counterInc(name: string, labels?: Fields): void;
  gaugeSet(name: string, labels: Fields | undefined, value: number): void;
  histogramObserve(name: string, labels: Fields | undefined, value: number): void;
};

/** The hooks a plugin class may define; each returns its outcome (`undefined`: continue). */
export interface PluginHooks {
  onConnect?(session: SessionInfo): Outcome | undefined | void;
  onHelo?(session: SessionInfo, helo: HeloInfo): Outcome | undefined | void;
  onMailFrom?(session: SessionInfo, sender: ReversePath, params: MailParams): Outcome | undefined | void;
  onRcptTo?(session: SessionInfo, txn: Transaction, rcpt: Recipient): RcptOutcome | Outcome | undefined | void;
  onData?(session: SessionInfo, txn: Transaction, msg: Message): DataOutcome | Outcome | undefined | void;
  onDeliver?(delivery: DeliveryInfo, txn: Transaction, msg: Message): DeliverOutcome | undefined | void;
}

/** The world's `hooks` export for a plugin class: `export const hooks = exportPlugin(MyPlugin)`. */
export function exportPlugin(
  plugin: new (config: Config) => PluginHooks,
  options?: { name?: string; version?: string },
): typeof import('mailgate:plugin/hooks') & { manifest(): PluginInfo };
