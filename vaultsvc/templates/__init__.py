"""The placeholder template engine: parse, check and render templates (pure, no I/O).

Usage: ``compile_template(text, encoding)`` once (cached for small templates),
then ``compiled.render(lookup)`` with the looked-up values, or ``render_fields`` for
all fields of one request (each value encoded once, the total size bounded first). ``scan_template``
reports every problem instead of raising on the first, and ``find_placeholders``
every valid placeholder even when there are problems, for CheckTemplate.
"""

from vaultsvc.limits import MAX_PLACEHOLDERS, MAX_PROBLEMS, MAX_TEMPLATE_BYTES
from vaultsvc.templates.compiler import (
    CACHEABLE_TEMPLATE_LENGTH,
    CompiledTemplate,
    Lookup,
    compile_template,
    find_placeholders,
    render_fields,
    scan_template,
)
from vaultsvc.templates.model import (
    INVALID_ENCODING,
    INVALID_HEADER_VALUE,
    INVALID_TEMPLATE,
    INVALID_URL_ORIGIN,
    INVALID_URL_VALUE,
    INVALID_VALUE,
    MALFORMED_PLACEHOLDER,
    PLACEHOLDER_NOT_ALLOWED,
    TEMPLATE_TOO_LARGE,
    Encoding,
    Placeholder,
    PlaceholderKind,
    Problem,
)

__all__ = [
    "CACHEABLE_TEMPLATE_LENGTH",
    "INVALID_ENCODING",
    "INVALID_HEADER_VALUE",
    "INVALID_TEMPLATE",
    "INVALID_URL_ORIGIN",
    "INVALID_URL_VALUE",
    "INVALID_VALUE",
    "MALFORMED_PLACEHOLDER",
    "MAX_PLACEHOLDERS",
    "MAX_PROBLEMS",
    "MAX_TEMPLATE_BYTES",
    "PLACEHOLDER_NOT_ALLOWED",
    "TEMPLATE_TOO_LARGE",
    "CompiledTemplate",
    "Encoding",
    "Lookup",
    "Placeholder",
    "PlaceholderKind",
    "Problem",
    "compile_template",
    "find_placeholders",
    "render_fields",
    "scan_template",
]
