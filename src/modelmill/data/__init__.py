"""Datasets as plain records: read files in many formats, normalize, clean, split, mix,
describe and hash them. No database here; ``store`` keeps track of the results.

    from modelmill.data import load_file, clean, split, stats, format_stats
    data = load_file("train.jsonl")
    kept = clean(data.records, data.kind).kept
    train, test = split(kept, test_size=0.1, kind=data.kind)
"""

from modelmill.data.clean import CleanResult, clean, record_text, token_length
from modelmill.data.formats import (FORMATS, KINDS, Format, Where, classification_prompt, detect_format,
                                    get_format, labels_of, register_format, to_messages)
from modelmill.data.load import LoadedData, content_hash, load_file, read_jsonl, write_jsonl_atomic
from modelmill.data.mix import MixResult, mix
from modelmill.data.readers import READERS, read_records
from modelmill.data.split import split
from modelmill.data.stats import format_stats, stats

__all__ = ["FORMATS", "KINDS", "READERS", "CleanResult", "Format", "LoadedData", "MixResult", "Where",
           "classification_prompt", "clean", "content_hash", "detect_format", "format_stats", "get_format",
           "labels_of", "load_file", "mix", "read_jsonl", "read_records", "record_text", "register_format",
           "split", "stats", "to_messages", "token_length", "write_jsonl_atomic"]
