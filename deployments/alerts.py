"""The alert that ships with the product: a notification whenever a download run ends Failed or Crashed.

A run ends Failed when any selected object could not be fetched (tasks.download_tasks.final_state) or when it
could not run at all; Crashed when its process died. The automation reacts to the server's flow-run events,
so it fires for runs started anywhere: schedules, the UI, `run_deployment`, the CLI with PREFECT_API_URL.
"""
from __future__ import annotations

from prefect.automations import Automation, EventTrigger, Posture, SendNotification

AUTOMATION = "download-failed"
WEBHOOK_BLOCK = "download-alerts"
FLOWS = ["object-download", "sharded-download", "feishu-attachments"]

SUBJECT = "Download {{ flow_run.name }} ended {{ flow_run.state.name }}"
BODY = """{{ flow.name }}/{{ deployment.name if deployment else '(no deployment)' }} run {{ flow_run.name }}
ended {{ flow_run.state.name }}: {{ flow_run.state.message }}
{{ flow_run|ui_url }}"""


def webhook_block(url: str, name: str = WEBHOOK_BLOCK):
    """A Custom Webhook block that POSTs {"subject", "body"} as JSON to `url` (Slack/Feishu bots, a pager, ...)."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    block = CustomWebhookNotificationBlock(name=name, url=url, method="POST",
                                           json_data={"subject": "{{subject}}", "body": "{{body}}"})
    block.save(name, overwrite=True)
    return block


def ensure_failure_alert(block_document_id) -> Automation:
    """Create (or replace) the automation that notifies through the given notification block."""
    try:
        Automation.read(name=AUTOMATION).delete()
    except ValueError:  # not there yet
        pass
    return Automation(
        name=AUTOMATION,
        description="A download run ended Failed (objects could not be fetched, or it could not run) or Crashed.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOWS},
            posture=Posture.Reactive, threshold=1, within=0),
        actions=[SendNotification(block_document_id=block_document_id, subject=SUBJECT, body=BODY)],
    ).create()
