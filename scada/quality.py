"""Quality as data: OPC UA status codes (OPC UA Part 4 §7.39 StatusCode, Part 8 §6.3 quality).

A status code is a 32-bit unsigned integer. Bits 31..30 give the severity: 00 Good,
01 Uncertain, 10 Bad. The values below are the ones from the OPC UA specification's
StatusCode.csv (the same table asyncua's ``ua.StatusCodes`` is generated from; a unit test
checks every value against it). They are plain ints so they live in numpy ``uint32`` arrays.

How the tag database uses them (Part 8 meanings):

* ``Good`` - the value was read from the device and is current.
* ``BadWaitingForInitialData`` - configured, not read yet (set at start-up).
* ``BadCommunicationError`` - the device is lost; the last value and its source timestamp
  are kept beside this code so an operator still sees what was last known.
* ``UncertainNoCommunicationLastUsableValue`` - communication failed but the last value is
  still usable (used for short outages before escalating to Bad).
* ``UncertainLastUsableValue`` - the value is stale (not refreshed for N periods).
* ``BadOutOfService`` - the device is under works (put out of service by an engineer).
* ``BadConfigurationError`` - the point's configuration cannot be honoured by the device
  (e.g. Modbus exception 0x02 illegal data address).
* ``BadNotConnected`` means "never configured/connected" in Part 8 and is *not* used for a
  lost device.

Field data screening (the tag database, issue 16; docs/devices/field-data.md):

* ``BadOutOfRange`` - a reading outside the point's plausible range (its ``valid_range``, Part 8
  §5.6.2 InstrumentRange, else its EU range), or a cumulative counter that went backwards or
  jumped faster than its ``max_rate``; the reading is kept beside the code.
* ``UncertainEngineeringUnitsExceeded`` - a reading outside the EU range (Part 8 §5.6.2
  EURange: normal operation) but inside a wider ``valid_range`` the profile declares (the
  instrument may legitimately read beyond its normal range).
* ``BadInvalidTimestamp`` - the source timestamp lies further in the future than the site's
  ``future_tolerance_s`` (Part 4 §7.39: "outside the range allowed by the server"); the value
  is kept and its source time clamped to the server's time.
"""

from __future__ import annotations

from typing import Final

import numpy as np

# --- Good -----------------------------------------------------------------------------------
Good: Final = 0x00000000
GoodClamped: Final = 0x00300000
GoodLocalOverride: Final = 0x00960000

# --- Uncertain --------------------------------------------------------------------------------
Uncertain: Final = 0x40000000
UncertainNoCommunicationLastUsableValue: Final = 0x408F0000
UncertainLastUsableValue: Final = 0x40900000
UncertainSubstituteValue: Final = 0x40910000
UncertainInitialValue: Final = 0x40920000
UncertainSensorNotAccurate: Final = 0x40930000
UncertainEngineeringUnitsExceeded: Final = 0x40940000

# --- Bad ----------------------------------------------------------------------------------------
Bad: Final = 0x80000000
BadUnexpectedError: Final = 0x80010000
BadInternalError: Final = 0x80020000
BadCommunicationError: Final = 0x80050000
BadTimeout: Final = 0x800A0000
BadNodeIdUnknown: Final = 0x80340000
BadUserAccessDenied: Final = 0x801F0000
BadWaitingForInitialData: Final = 0x80320000
BadNoCommunication: Final = 0x80310000
BadOutOfRange: Final = 0x803C0000
BadNotWritable: Final = 0x803B0000
BadNotSupported: Final = 0x803D0000
BadTypeMismatch: Final = 0x80740000
BadConfigurationError: Final = 0x80890000
BadNotConnected: Final = 0x808A0000
BadDeviceFailure: Final = 0x808B0000
BadSensorFailure: Final = 0x808C0000
BadOutOfService: Final = 0x808D0000
BadResourceUnavailable: Final = 0x80040000
BadTooManyOperations: Final = 0x80100000
BadInvalidArgument: Final = 0x80AB0000
BadInvalidState: Final = 0x80AF0000
BadNoData: Final = 0x809B0000
BadInvalidTimestamp: Final = 0x80230000
BadIdentityTokenRejected: Final = 0x80210000
BadCertificateUntrusted: Final = 0x801A0000
BadSecurityPolicyRejected: Final = 0x80550000
# sessions, subscriptions and Part 9 condition methods (the operator API answers with these)
BadSessionIdInvalid: Final = 0x80250000
BadSubscriptionIdInvalid: Final = 0x80280000
BadEventIdUnknown: Final = 0x809A0000
BadConditionBranchAlreadyAcked: Final = 0x80CF0000
BadConditionAlreadyShelved: Final = 0x80D10000
BadConditionNotShelved: Final = 0x80D20000
BadShelvingTimeOutOfRange: Final = 0x80D30000
BadTooManySessions: Final = 0x80560000
BadRequestTooLarge: Final = 0x80B80000
BadEntryExists: Final = 0x809F0000
BadNoEntryExists: Final = 0x80A00000

NAMES: Final[dict[int, str]] = {
    v: k
    for k, v in dict(globals()).items()
    if isinstance(v, int) and not k.startswith("_") and k[0].isupper() and k != "Final"
}

_SEVERITY_MASK: Final = 0xC0000000
# Low 16 bits carry info bits (Part 4 §7.39 Table 181); the code proper is the top 16 bits.
_CODE_MASK: Final = 0xFFFF0000


def is_good(code: int) -> bool:
    return (int(code) & _SEVERITY_MASK) == 0


def is_uncertain(code: int) -> bool:
    return (int(code) & _SEVERITY_MASK) == 0x40000000


def is_bad(code: int) -> bool:
    return (int(code) & 0x80000000) != 0


def name(code: int) -> str:
    """Symbolic name of a status code (``BadCommunicationError``), or its hex form."""
    code = int(code)
    return NAMES.get(code) or NAMES.get(code & _CODE_MASK) or f"0x{code:08X}"


def severity(code: int) -> str:
    """``good``, ``uncertain`` or ``bad``."""
    if is_bad(code):
        return "bad"
    return "uncertain" if is_uncertain(code) else "good"


def good_mask(codes: np.ndarray) -> np.ndarray:
    """Vectorised ``is_good`` over a ``uint32`` array."""
    return (codes & np.uint32(_SEVERITY_MASK)) == 0


def bad_mask(codes: np.ndarray) -> np.ndarray:
    """Vectorised ``is_bad`` over a ``uint32`` array."""
    return (codes & np.uint32(0x80000000)) != 0
