//! `restart`: chat traffic while the router process is killed and
//! started again.
//!
//! The generator runs the router itself (`--router-cmd`), kills it with
//! SIGKILL at two fifths of the traffic and starts it again at once (see
//! `run::Restarter`). Every node sees its connection fail, reconnects
//! (retrying until the new process listens), is told the stream is new,
//! and resyncs its sessions; during the new router's warm-up a message to
//! a user whose node has not resynced yet gets Unknown. The oracle wants
//! exactly one outcome per message that its sender can see: a delivery, a
//! verdict, or (for a message with neither) the failure of the sender's
//! own connection shortly after it was sent (`link_failed`).

use std::rc::Rc;

use super::chat;
use crate::sim::{Schedule, SimNode};

pub async fn run(node: Rc<SimNode>, schedule: Schedule) {
    chat::drive(node, schedule, SimNode::send_message).await
}
