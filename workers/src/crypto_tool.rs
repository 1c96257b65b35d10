//! `workers crypto sign|encrypt|decrypt`: offline WXBizMsgCrypt tools for support work — read a
//! captured push, build a test push or reply, check a signature.

use common::crypto::{MsgCrypt, RANDOM_LEN, sha1_sorted};
use common::xml::envelope::Envelope;
use secrecy::SecretString;
use std::io::Read;

/// Offline WXBizMsgCrypt tools.
#[derive(clap::Subcommand, Debug)]
pub enum CryptoCommand {
    /// Print the SHA-1 signature of the given parts (sorted byte-wise, concatenated):
    /// `sign TOKEN TIMESTAMP NONCE` gives `signature`, adding the Encrypt value gives
    /// `msg_signature`.
    Sign {
        /// The parts to sign, in any order.
        #[arg(required = true, num_args = 1..)]
        parts: Vec<String>,
    },
    /// Read a plaintext message on stdin and print the complete encrypted passive-reply XML.
    Encrypt {
        #[command(flatten)]
        keys: CryptoArgs,
        /// TimeStamp of the reply (default: now).
        #[arg(long)]
        timestamp: Option<String>,
        /// Nonce of the reply (default: random digits).
        #[arg(long)]
        nonce: Option<String>,
        /// The 16-character random prefix, for reproducible output (default: random).
        #[arg(long)]
        random: Option<String>,
    },
    /// Read an encrypted push body (the whole XML, or just the Encrypt value) on stdin, verify
    /// its msg_signature and print the plaintext.
    Decrypt {
        #[command(flatten)]
        keys: CryptoArgs,
        /// `timestamp` of the push's query string.
        #[arg(long)]
        timestamp: String,
        /// `nonce` of the push's query string.
        #[arg(long)]
        nonce: String,
        /// `msg_signature` of the push's query string.
        #[arg(long)]
        msg_signature: String,
    },
}

/// The part of the platform's credentials the crypto tools need (flags, or the same
/// environment variables as the services). Its `Debug` redacts the Token and the key.
#[derive(clap::Args)]
pub struct CryptoArgs {
    /// The message-verification Token.
    #[arg(long, env = "WXPIPE_TOKEN", hide_env_values = true)]
    token: String,
    /// The 43-character EncodingAESKey.
    #[arg(
        long = "aes-key",
        env = "WXPIPE_ENCODING_AES_KEY",
        hide_env_values = true
    )]
    aes_key: String,
    /// The component appid every plaintext ends with.
    #[arg(long, env = "WXPIPE_COMPONENT_APPID")]
    appid: String,
}

impl std::fmt::Debug for CryptoArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoArgs")
            .field("token", &"[redacted]")
            .field("aes_key", &"[redacted]")
            .field("appid", &self.appid)
            .finish()
    }
}

impl CryptoArgs {
    fn crypt(&self) -> anyhow::Result<MsgCrypt> {
        MsgCrypt::new(
            SecretString::from(self.token.clone()),
            &self.aes_key,
            self.appid.clone(),
        )
        .map_err(|e| anyhow::anyhow!("--aes-key: {e}"))
    }
}

/// Runs one crypto command and returns what it prints on stdout.
pub fn run(cmd: CryptoCommand) -> anyhow::Result<String> {
    match cmd {
        CryptoCommand::Sign { parts } => {
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            Ok(sha1_sorted(&parts))
        }
        CryptoCommand::Encrypt {
            keys,
            timestamp,
            nonce,
            random,
        } => {
            let crypt = keys.crypt()?;
            let plaintext = read_stdin()?;
            let timestamp = timestamp.unwrap_or_else(|| common::unix_now().to_string());
            let nonce = nonce.unwrap_or_else(|| (rand_u32() % 1_000_000_000).to_string());
            Ok(match random {
                Some(r) => {
                    let random: [u8; RANDOM_LEN] = r.as_bytes().try_into().map_err(|_| {
                        anyhow::anyhow!(
                            "--random must be exactly {RANDOM_LEN} bytes, got {}",
                            r.len()
                        )
                    })?;
                    crypt.encrypt_reply_with_random(&plaintext, &timestamp, &nonce, &random)
                }
                None => crypt.encrypt_reply(&plaintext, &timestamp, &nonce),
            })
        }
        CryptoCommand::Decrypt {
            keys,
            timestamp,
            nonce,
            msg_signature,
        } => {
            let crypt = keys.crypt()?;
            let input = read_stdin()?;
            let encrypt = if input.trim_start().starts_with('<') {
                Envelope::parse(input.as_bytes())
                    .map_err(|e| anyhow::anyhow!("reading the push body: {e}"))?
                    .encrypt()
                    .to_owned()
            } else {
                input.trim().to_owned()
            };
            crypt
                .verify_msg_signature(&timestamp, &nonce, &encrypt, &msg_signature)
                .map_err(|e| anyhow::anyhow!("msg_signature: {e}"))?;
            crypt
                .decrypt(&encrypt)
                .map_err(|e| anyhow::anyhow!("decrypting: {e}"))
        }
    }
}

fn read_stdin() -> anyhow::Result<String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| anyhow::anyhow!("reading stdin: {e}"))?;
    String::from_utf8(buf).map_err(|_| anyhow::anyhow!("stdin is not UTF-8"))
}

fn rand_u32() -> u32 {
    let random = common::crypto::random_prefix();
    u32::from_le_bytes([random[0], random[1], random[2], random[3]])
}
