"""genlab.recipes: end-to-end jobs (speedrun) that chain the layers below; the CLI renders them."""
