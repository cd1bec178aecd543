//! A private workflow over private types compiles: the workflow value keeps
//! the fn's (private) visibility rather than becoming `pub` (E0446).

mod inner {
    use durable::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct Secret {
        value: u32,
    }

    #[derive(Serialize, Deserialize)]
    struct Reply(u32);

    #[durable]
    async fn private_flow(_ctx: &Ctx, secret: Secret) -> Result<Reply, String> {
        let doubled = step!("double", Ok::<u32, String>(secret.value * 2))?;
        Ok(Reply(doubled))
    }

    pub(crate) fn name() -> &'static str {
        use durable::{IntoWorkflow, Workflow};
        fn name<I: IntoWorkflow>(_: I) -> &'static str {
            <I::Workflow as Workflow>::NAME
        }
        name(private_flow)
    }
}

fn main() {
    assert_eq!(inner::name(), "private_flow");
}
