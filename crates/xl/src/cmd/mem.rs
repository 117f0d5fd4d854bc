//! Memory commands (`mem-set`, `mem-max`).

use crate::cmdtable::Handler;

/// This group's handler for `name`, if it implements that command.
pub fn handler(name: &str) -> Option<Handler> {
    let _ = name;
    None
}
