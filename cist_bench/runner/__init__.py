"""The only package that imports Ray: campaigns (Tune) whose runs execute on Ray Train."""

from cist_bench.runner.campaign import CampaignResult, resolve_executor, run_campaign

__all__ = ["CampaignResult", "resolve_executor", "run_campaign"]
