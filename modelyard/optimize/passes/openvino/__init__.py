"""OpenVINO passes: ``openvino`` (fp32), ``openvino-bf16`` (``convert``) and ``openvino-int8`` (NNCF static
int8, ``int8``); what they share is in ``common``. OpenVINO and NNCF are an optional extra: importing this
package imports neither, and without them each pass is skipped with a one-line reason. Importing this
package registers the three passes."""

from modelyard.optimize.passes.openvino import convert, int8  # noqa: F401
