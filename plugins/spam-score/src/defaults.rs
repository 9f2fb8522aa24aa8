//! The rules the plugin ships with (`default_rules = true`, the default): a baseline in
//! the spirit of SpamAssassin's and rspamd's, our own patterns. They are config entries
//! like the admin's: a rule of the config with the same name replaces one of these
//! entirely, and `score = 0` turns one off. docs/spam.md lists them.

/// `(rule, key, value)` entries, as `rules.RULE.key = value`.
pub const RULES: &[(&str, &str, &str)] = &[
    // Headers.
    ("MISSING_DATE", "header", "Date"),
    ("MISSING_DATE", "exists", "false"),
    ("MISSING_DATE", "score", "1.0"),
    ("MISSING_MESSAGE_ID", "header", "Message-ID"),
    ("MISSING_MESSAGE_ID", "exists", "false"),
    ("MISSING_MESSAGE_ID", "score", "0.5"),
    ("MISSING_SUBJECT", "header", "Subject"),
    ("MISSING_SUBJECT", "exists", "false"),
    ("MISSING_SUBJECT", "score", "1.0"),
    ("SEVERAL_FROM", "header", "From"),
    ("SEVERAL_FROM", "count_over", "1"),
    ("SEVERAL_FROM", "score", "2.0"),
    ("SUBJ_ALL_CAPS", "header", "Subject"),
    ("SUBJ_ALL_CAPS", "regex", r"^[^a-z]*[A-Z][^a-z]{9,}$"),
    ("SUBJ_ALL_CAPS", "score", "1.5"),
    ("SUBJ_EXCESS_PUNCT", "header", "Subject"),
    ("SUBJ_EXCESS_PUNCT", "regex", r"[!?$]{3,}"),
    ("SUBJ_EXCESS_PUNCT", "score", "1.0"),
    ("SUBJ_SPAMMY_WORDS", "header", "Subject"),
    (
        "SUBJ_SPAMMY_WORDS",
        "regex",
        r"(?i)\b(viagra|cialis|casino|lottery|jackpot|winner|100% free|act now|risk[- ]free)\b",
    ),
    ("SUBJ_SPAMMY_WORDS", "score", "2.0"),
    // Body text.
    (
        "BODY_LOTTERY",
        "body",
        r"(?i)\b(you have won|you('ve| have) been selected|claim your (prize|reward)|winning notification|lottery)\b",
    ),
    ("BODY_LOTTERY", "score", "2.5"),
    (
        "BODY_ADVANCE_FEE",
        "body",
        r"(?i)\b(next of kin|beneficiary of|transfer (the|this) (sum|fund)|million (united states |us )?dollars|diplomatic courier)\b",
    ),
    ("BODY_ADVANCE_FEE", "score", "4.0"),
    (
        "BODY_ACCOUNT_PHISH",
        "body",
        r"(?i)\b(verify|confirm|update|validate|unlock) your (account|password|mailbox|login|banking|payment) (details|information|now|immediately|within)",
    ),
    ("BODY_ACCOUNT_PHISH", "score", "2.5"),
    (
        "BODY_URGENCY",
        "body",
        r"(?i)\b(act now|urgent(ly)? (response|action)|within 24 hours|account (will be )?(suspended|closed|terminated))\b",
    ),
    ("BODY_URGENCY", "score", "1.0"),
    (
        "BODY_PHARMA",
        "body",
        r"(?i)\b(viagra|cialis|levitra|tramadol|xanax|online pharmacy)\b",
    ),
    ("BODY_PHARMA", "score", "3.5"),
    (
        "BODY_BITCOIN_ADDRESS",
        "body",
        r"(?i)\b(bitcoin|btc) (wallet|address)\b",
    ),
    ("BODY_BITCOIN_ADDRESS", "score", "1.0"),
    (
        "BODY_EXTORTION_THREAT",
        "body",
        r"(?i)\b(webcam|recorded you|video of you|your contacts|intimate video)\b",
    ),
    ("BODY_EXTORTION_THREAT", "score", "1.0"),
    (
        "BODY_CRYPTO_EXTORTION",
        "all_of",
        r#"["BODY_BITCOIN_ADDRESS","BODY_EXTORTION_THREAT"]"#,
    ),
    ("BODY_CRYPTO_EXTORTION", "score", "4.5"),
    (
        "BODY_UNSUBSCRIBE_TRICK",
        "body",
        r"(?i)\bthis is not (spam|a spam)\b",
    ),
    ("BODY_UNSUBSCRIBE_TRICK", "score", "1.5"),
    // HTML.
    (
        "HTML_HIDDEN_TEXT",
        "html",
        r#"(?i)(display\s*:\s*none|font-size\s*:\s*[01]px|visibility\s*:\s*hidden)"#,
    ),
    ("HTML_HIDDEN_TEXT", "score", "1.0"),
    ("HTML_FORM", "html", r"(?i)<form\b"),
    ("HTML_FORM", "score", "1.5"),
    // URLs.
    (
        "URL_SHORTENER",
        "url",
        r"(?i)^https?://(bit\.ly|tinyurl\.com|goo\.gl|t\.co|ow\.ly|is\.gd|buff\.ly|rebrand\.ly|cutt\.ly|shorturl\.at)/",
    ),
    ("URL_SHORTENER", "score", "1.0"),
    (
        "URL_IP_HOST",
        "url",
        r"^https?://(\d{1,3}\.){3}\d{1,3}(/|$|\?)",
    ),
    ("URL_IP_HOST", "score", "2.0"),
    (
        "URL_SUSPICIOUS_TLD",
        "url",
        r"(?i)^https?://[^/]+\.(zip|mov|xyz|top|click|country|kim|work|gq|tk|ml|cf)(/|$|\?)",
    ),
    ("URL_SUSPICIOUS_TLD", "score", "1.0"),
    // Attachments.
    (
        "ATTACH_EXECUTABLE",
        "attachment_name",
        r"(?i)\.(exe|scr|pif|com|bat|cmd|js|jse|vbs|vbe|wsf|hta|msi|jar|lnk|iso|img|ps1)$",
    ),
    ("ATTACH_EXECUTABLE", "score", "6.0"),
    (
        "ATTACH_DOUBLE_EXTENSION",
        "attachment_name",
        r"(?i)\.(pdf|docx?|xlsx?|jpe?g|png|txt|zip)\.(exe|scr|js|bat|com|vbs|cmd)$",
    ),
    ("ATTACH_DOUBLE_EXTENSION", "score", "9.0"),
    (
        "ATTACH_MACRO_OFFICE",
        "attachment_name",
        r"(?i)\.(docm|xlsm|pptm|dotm)$",
    ),
    ("ATTACH_MACRO_OFFICE", "score", "2.0"),
    // Session and envelope.
    ("HELO_NOT_FQDN", "check", "helo_not_fqdn"),
    ("HELO_NOT_FQDN", "score", "1.0"),
    ("HELO_IP_LITERAL", "check", "helo_ip_literal"),
    ("HELO_IP_LITERAL", "score", "1.0"),
    ("HELO_NOT_PTR", "check", "helo_not_ptr"),
    ("HELO_NOT_PTR", "score", "0.3"),
    ("NO_FCRDNS", "check", "no_fcrdns"),
    ("NO_FCRDNS", "score", "1.0"),
    ("SENDER_DOMAIN_NO_MX", "check", "sender_domain_no_mx"),
    ("SENDER_DOMAIN_NO_MX", "score", "2.0"),
    ("MANY_RECIPIENTS", "recipients_over", "50"),
    ("MANY_RECIPIENTS", "score", "0.5"),
    // Authentication (with the auth-results capability).
    ("SPF_FAIL", "auth", "spf:fail"),
    ("SPF_FAIL", "score", "2.0"),
    ("SPF_SOFTFAIL", "auth", "spf:softfail"),
    ("SPF_SOFTFAIL", "score", "1.0"),
    ("DKIM_FAIL", "auth", "dkim:fail"),
    ("DKIM_FAIL", "score", "1.0"),
    ("DKIM_PASS", "auth", "dkim:pass"),
    ("DKIM_PASS", "score", "-0.5"),
    ("DMARC_FAIL", "auth", "dmarc:fail"),
    ("DMARC_FAIL", "score", "3.0"),
    // Composites.
    (
        "PHISH_SHORT_URL",
        "all_of",
        r#"["BODY_ACCOUNT_PHISH","URL_SHORTENER"]"#,
    ),
    ("PHISH_SHORT_URL", "score", "2.0"),
    (
        "PHISH_SUSPICIOUS_URL",
        "all_of",
        r#"["BODY_ACCOUNT_PHISH","URL_SUSPICIOUS_TLD"]"#,
    ),
    ("PHISH_SUSPICIOUS_URL", "score", "2.0"),
    (
        "PHISH_IP_URL",
        "all_of",
        r#"["BODY_ACCOUNT_PHISH","URL_IP_HOST"]"#,
    ),
    ("PHISH_IP_URL", "score", "2.0"),
    ("ADVANCE_FEE_UNSIGNED", "all_of", r#"["BODY_ADVANCE_FEE"]"#),
    ("ADVANCE_FEE_UNSIGNED", "none_of", r#"["DKIM_PASS"]"#),
    ("ADVANCE_FEE_UNSIGNED", "score", "1.5"),
];

/// The config entries of the default rules that `config` does not replace: a rule the
/// config names is left out whole.
pub fn entries(config: &mailgate_plugin_sdk::Config) -> Vec<(String, String)> {
    // The rules the config names (one pass over it).
    let configured: std::collections::HashSet<&str> = config
        .iter()
        .filter_map(|(k, _)| k.strip_prefix("rules.")?.split('.').next())
        .collect();
    RULES
        .iter()
        .filter(|(rule, _, _)| !configured.contains(rule))
        .map(|(rule, k, v)| (format!("rules.{rule}.{k}"), v.to_string()))
        .collect()
}
