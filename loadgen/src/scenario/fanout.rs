//! `fanout`: group messages. Every message is a Fanout to a group whose
//! members (online users, plus `--offline-ratio` as many offline ones) and
//! size (one of `--group-sizes`) follow from its message id, so each node
//! can check on arrival that its Deliver lists exactly the members it
//! hosts, with their devices. The oracle then requires, per message, one
//! right Deliver at every node hosting a member, none elsewhere, and one
//! Status listing exactly the offline members. Rates and windows are the
//! chat scenario's, counted in Fanouts.

use std::rc::Rc;

use crate::sim::{Schedule, SimNode};

use super::chat;

pub async fn run(node: Rc<SimNode>, schedule: Schedule) {
    chat::drive(node, schedule, SimNode::send_fanout).await
}
