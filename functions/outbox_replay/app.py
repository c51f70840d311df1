"""Outbox replay: the turns answered while DynamoDB was unavailable, stored once it answers.

An SQS event source (the FIFO turn outbox, ``ReportBatchItemFailures``) hands over batches. Each
record is one finished turn (``chatmemory.outbox``); the domain stores it in order, exactly once,
and drops the session's cache window. A record that fails is reported, with every later record
of its session (message group), so the session's order holds; other sessions carry on. After the
queue's ``maxReceiveCount`` receives a record moves to the dead-letter queue.
"""

from typing import Any

from aws_lambda_powertools.utilities.batch import SqsFifoPartialProcessor, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from chatmemory.observability import logger, metrics, tracer
from chatmemory.outbox import parse_record
from chatmemory.services import get_services

processor = SqsFifoPartialProcessor(skip_group_on_error=True)


@tracer.capture_method(capture_response=False)
def replay(record: SQSRecord) -> int:
    queued = parse_record(record.body)
    logger.append_keys(session_id=queued.turn.session_id, outbox_id=queued.outbox_id)
    return get_services().outbox_replayer.replay(queued)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=replay, processor=processor, context=context)
