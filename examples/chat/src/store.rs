//! The node's messages, in SQLite: what its users sent (with their state
//! per recipient: sending, delivered, offline) and what they received.
//! Messages for users the router says are offline stay here, `offline`,
//! until the recipient is seen online somewhere in the cluster; then the
//! node routes them again.

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

/// A chat message as it travels (the router's payload, JSON) and as the
/// page shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatMessage {
    /// Unique in the cluster: `<node>-<counter>`.
    pub id: String,
    pub from: String,
    /// One user, or a group's members.
    pub to: Vec<String>,
    pub text: String,
    /// Milliseconds since the epoch, when sent.
    pub at: u64,
}

/// A sent message's (recipient, state) pairs.
pub type States = Vec<(String, String)>;

pub struct Store {
    db: Connection,
}

/// Delivery state of a sent message for one recipient.
pub const SENDING: &str = "sending";
pub const DELIVERED: &str = "delivered";
pub const OFFLINE: &str = "offline";

impl Store {
    pub fn open(path: &str) -> rusqlite::Result<Store> {
        let db = Connection::open(path)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS sent (
                 id TEXT NOT NULL, recipient TEXT NOT NULL, message TEXT NOT NULL,
                 state TEXT NOT NULL, at INTEGER NOT NULL,
                 PRIMARY KEY (id, recipient));
             CREATE INDEX IF NOT EXISTS sent_offline ON sent (recipient, state);
             CREATE TABLE IF NOT EXISTS received (
                 id TEXT NOT NULL, recipient TEXT NOT NULL, message TEXT NOT NULL,
                 at INTEGER NOT NULL, PRIMARY KEY (id, recipient));",
        )?;
        Ok(Store { db })
    }

    /// Saves a message a local user sends, `sending` to each recipient.
    pub fn save_sent(&self, message: &ChatMessage) -> rusqlite::Result<()> {
        let json = serde_json::to_string(message).expect("serializable");
        for recipient in &message.to {
            self.db.execute(
                "INSERT OR IGNORE INTO sent (id, recipient, message, state, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![message.id, recipient, json, SENDING, message.at as i64],
            )?;
        }
        Ok(())
    }

    pub fn set_state(&self, id: &str, recipient: &str, state: &str) -> rusqlite::Result<()> {
        self.db.execute(
            "UPDATE sent SET state = ?3 WHERE id = ?1 AND recipient = ?2",
            params![id, recipient, state],
        )?;
        Ok(())
    }

    /// Keeps a message received for a local user; false if it was already
    /// there (a copy).
    pub fn save_received(&self, message: &ChatMessage, recipient: &str) -> rusqlite::Result<bool> {
        let json = serde_json::to_string(message).expect("serializable");
        let inserted = self.db.execute(
            "INSERT OR IGNORE INTO received (id, recipient, message, at) VALUES (?1, ?2, ?3, ?4)",
            params![message.id, recipient, json, message.at as i64],
        )?;
        Ok(inserted == 1)
    }

    /// Messages kept offline for `recipient`.
    pub fn offline_for(&self, recipient: &str) -> rusqlite::Result<Vec<ChatMessage>> {
        let mut statement = self
            .db
            .prepare("SELECT message FROM sent WHERE recipient = ?1 AND state = ?2 ORDER BY at")?;
        let rows =
            statement.query_map(params![recipient, OFFLINE], |row| row.get::<_, String>(0))?;
        Ok(rows
            .filter_map(|row| row.ok())
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect())
    }

    /// The recipients with messages kept offline.
    pub fn offline_recipients(&self) -> rusqlite::Result<Vec<String>> {
        let mut statement = self
            .db
            .prepare("SELECT DISTINCT recipient FROM sent WHERE state = ?1")?;
        let rows = statement.query_map(params![OFFLINE], |row| row.get::<_, String>(0))?;
        Ok(rows.filter_map(|row| row.ok()).collect())
    }

    /// `user`'s last messages, sent or received here, oldest first, with
    /// the state of each sent one for each recipient.
    pub fn history(
        &self,
        user: &str,
        limit: usize,
    ) -> rusqlite::Result<Vec<(ChatMessage, States)>> {
        let mut statement = self.db.prepare(
            "SELECT message, at FROM (
                 SELECT message, at FROM sent WHERE message LIKE ?1
                 UNION SELECT message, at FROM received WHERE recipient = ?2)
             ORDER BY at DESC LIMIT ?3",
        )?;
        let pattern = format!(
            "%\"from\":{}%",
            serde_json::to_string(user).expect("string")
        );
        let rows = statement.query_map(params![pattern, user, limit as i64], |row| {
            row.get::<_, String>(0)
        })?;
        let mut messages: Vec<ChatMessage> = rows
            .filter_map(|row| row.ok())
            .filter_map(|json| serde_json::from_str(&json).ok())
            .filter(|m: &ChatMessage| m.from == user || m.to.iter().any(|to| to == user))
            .collect();
        messages.reverse();
        messages.dedup_by(|a, b| a.id == b.id);
        let mut out = Vec::new();
        for message in messages {
            let states = if message.from == user {
                let mut statement = self
                    .db
                    .prepare("SELECT recipient, state FROM sent WHERE id = ?1")?;
                let rows = statement.query_map(params![message.id], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })?;
                rows.filter_map(|row| row.ok()).collect()
            } else {
                Vec::new()
            };
            out.push((message, states));
        }
        Ok(out)
    }
}
