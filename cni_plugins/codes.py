"""Every CNI error code Berth answers with, named once.

The spec's codes (1-99) keep the spec's meaning; Berth's own (100 and up, which the spec leaves to plugins) each
mean one thing across every plugin and every room that answers one (the discovery agent's socket included), and
the README's table lists them. Standard library only (no imports at all): the plugins' entry path and the agent
both load it.
"""

# --- the spec's ---------------------------------------------------------------------------------------------------
INCOMPATIBLE_VERSION = 1      # the config's cniVersion is not one this plugin speaks
UNSUPPORTED_FIELD = 2         # a field in the config is not supported (the message names it)
UNKNOWN_CONTAINER = 3         # the container is unknown or does not exist
INVALID_ENVIRONMENT = 4       # a CNI_* environment variable (or CNI_ARGS) is missing or invalid
IO_FAILURE = 5                # reading or writing state failed (disk, socket, netlink)
DECODE_FAILURE = 6            # stdin or a file the config names could not be decoded (JSON, text, nesting)
INVALID_CONFIG = 7            # the config decodes but a field is wrong (type, range, path); the message names it
TRY_AGAIN_LATER = 11          # transient: the runtime should retry (daemon stalled, subnet lease not yet held)
NOT_AVAILABLE = 50            # STATUS (and ADD): the plugin cannot serve ADD now
NOT_AVAILABLE_LIMITED = 51    # STATUS: not available, and existing containers may have limited connectivity

# --- Berth's own (>= 100) -----------------------------------------------------------------------------------------
ADDRESS_UNAVAILABLE = 100     # a requested address is taken, is a gateway, or lies in no range set
STATE_DIFFERS = 101           # CHECK: links, addresses, reservations or rules on the host differ from prevResult
PORT_TAKEN = 102              # a host port is already published by another container
DUPLICATE_ALLOCATION = 103    # IPAM ADD for an attachment that already holds an address in that range set
HOST_CONFLICT = 104           # a host object in the way: a non-bridge link by the bridge's name, the container
#                               interface name already taken, an address on the bridge without forceAddress
DELEGATE_FAILED = 105         # a delegated plugin failed without a spec error, or returned no usable result
GC_INCOMPLETE = 106           # GC released what it could, but some stale attachments could not be released

INTERNAL = 999                # a bug in Berth: never the answer to anything a caller sends

SPEC_CODES = (INCOMPATIBLE_VERSION, UNSUPPORTED_FIELD, UNKNOWN_CONTAINER, INVALID_ENVIRONMENT, IO_FAILURE,
              DECODE_FAILURE, INVALID_CONFIG, TRY_AGAIN_LATER, NOT_AVAILABLE, NOT_AVAILABLE_LIMITED)
BERTH_CODES = (ADDRESS_UNAVAILABLE, STATE_DIFFERS, PORT_TAKEN, DUPLICATE_ALLOCATION, HOST_CONFLICT,
               DELEGATE_FAILED, GC_INCOMPLETE)
# Codes that say the request itself is wrong: retrying the same request cannot help.
INPUT_ERRORS = (INVALID_ENVIRONMENT, DECODE_FAILURE, INVALID_CONFIG)
