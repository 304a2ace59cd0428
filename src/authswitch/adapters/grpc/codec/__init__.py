"""The one place where protobuf messages become domain values and domain values become
protobuf messages (issue 19, item 2).

Services take and return domain types only (``authswitch.domain`` and plain values). This
package converts both ways, one module per area of the API:

* ``common`` — money, balances and currency conversions, used by every area;
* one module per service area (authorisation, lifecycle, disputes, tokens, admin, files,
  the client's DecisionService), each with the requests' ``*_of`` functions (protobuf in,
  domain out) and the replies' ``*_message`` functions or encoder classes (domain in,
  protobuf or its bytes out).

A service that stores its reply with the decision (for byte-identical idempotent replays)
is handed an encoder from here at construction, typed by a ``Protocol`` that the service
declares; it never imports this package. Nothing here decides anything: a rule found
here belongs in ``authswitch.domain``.
"""
