"""Structure files → records."""

from crystaltwins.io.readers import iter_entries, parse_entry, read_records, records_from_structures
from crystaltwins.io.records import BadRecord, CrystalInputError, CrystalRecord

__all__ = [
    "BadRecord",
    "CrystalInputError",
    "CrystalRecord",
    "iter_entries",
    "parse_entry",
    "read_records",
    "records_from_structures",
]
