//! `sagactl slot create|get|list`: delivery slots.

use crate::cli::SlotCmd;
use crate::client::{Clients, status_error};
use crate::show;

pub(super) async fn run(c: &Clients, cmd: SlotCmd) -> anyhow::Result<()> {
    match cmd {
        SlotCmd::Create { name, capacity } => {
            let s = c.create_slot(&name, capacity).await.map_err(status_error)?;
            println!("{}", show::slot(&s));
        }
        SlotCmd::Get { slot_id } => {
            let s = c.get_slot(&slot_id).await.map_err(status_error)?;
            println!("{}", show::slot(&s));
        }
        SlotCmd::List => {
            let mut token = String::new();
            loop {
                let page = c.list_slots(token).await.map_err(status_error)?;
                for s in &page.slots {
                    println!("{}", show::slot(s));
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
    }
    Ok(())
}
