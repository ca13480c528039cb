"""`churnwatch serve model_path=M [host=127.0.0.1] [port=8000] [workers=1] [...]`"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from churnwatch.cli.app import command, require_packages


@command("serve")
def main(cfg: DictConfig) -> None:
    """Serve a model.pt over HTTP: POST /v1/score answers with the columns of churnwatch score."""
    require_packages("churnwatch serve", ("fastapi", "uvicorn", "prometheus_client"), "serve")
    from churnwatch.serving.server import serve

    serve(OmegaConf.to_object(cfg))


if __name__ == "__main__":
    main()
