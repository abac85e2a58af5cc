"""Joining a Ray cluster (or starting a local one), the same way in every stage."""

from __future__ import annotations

from atflrec.errors import UserError


def connect(address: str | None) -> int:
    """Join ``address`` or start Ray locally, unless Ray is already up; returns the cluster's CPUs.

    Without ``address``, ``ray.init`` follows ``RAY_ADDRESS`` when it is set, else starts Ray here.
    Token authentication: set ``RAY_AUTH_TOKEN`` (or ``RAY_AUTH_TOKEN_PATH``) to the cluster's token.
    """
    import ray  # here, not at the top: importing Ray is slow and reading configs must stay quick

    from atflrec.console import after_ray_init

    if not ray.is_initialized():
        try:
            ray.init(address=address) if address else ray.init()
        except ray.exceptions.AuthenticationError as exc:
            raise UserError(
                f"the Ray cluster at {address!r} refused this client's token: {exc}\n"
                "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token (`ray get-auth-token` on the head)"
            ) from None
        except ConnectionError as exc:
            raise UserError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None
    after_ray_init()  # worker lines: atflrec's to the terminal, the rest to the log (quiet mode)
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
