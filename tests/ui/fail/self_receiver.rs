use durable::prelude::*;

struct Service;

impl Service {
    #[durable]
    async fn provision(&self, _ctx: &Ctx, input: u32) -> Result<u32, String> {
        Ok(input)
    }
}

fn main() {}
