"""Event files written by ``EventFile`` are what TensorBoard's own reader accepts, checksums included."""

import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.tensorflow_stub import errors
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New, masked_crc32c as reference_crc

from mim_lightning.training.event_file import EventFile, masked_crc32c


def read(path):
    reader, events = PyRecordReader_New(str(path)), []
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return events
        events.append(event_pb2.Event.FromString(reader.record()))


def scalar_event(step, value):
    return event_pb2.Event(step=step, summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="a", simple_value=value)]))


@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)) * 3])
def test_masked_checksum_is_tensorboards(data):
    assert masked_crc32c(data) == reference_crc(data)


def test_records_read_back_and_a_corrupted_byte_is_caught(tmp_path):
    writer = EventFile(tmp_path)
    for step in range(3):
        writer.write(scalar_event(step, 0.25 * step))
    writer.close()
    events = read(writer.path)
    assert events[0].file_version == "brain.Event:2"
    assert [(e.step, e.summary.value[0].simple_value) for e in events[1:]] == [(0, 0.0), (1, 0.25), (2, 0.5)]
    raw = bytearray(writer.path.read_bytes())
    raw[-6] ^= 1   # inside the last record's data
    writer.path.write_bytes(bytes(raw))
    with pytest.raises(errors.DataLossError):
        read(writer.path)
