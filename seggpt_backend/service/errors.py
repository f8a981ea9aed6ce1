"""The service's errors: one hierarchy, and what each means for a caller.

===================  =====================================================================
``ServiceError``     base of everything below
``RequestError``     a well-formed request that cannot be served: HTTP 422 with the message,
                     which names the task, field or setting at fault
``ConfigUnsupported`` the labelling config has nothing this backend predicts (a ``RequestError``)
``PromptError``      the editor's smart-tool context cannot be answered (a ``RequestError``)
``Unavailable``      predictions cannot be computed right now (model failed to load): HTTP 503
``ContractError``    a job payload that does not follow the serve/worker contract: the job fails
``ExampleError``     one example cannot be used (its image is gone...): the example is skipped
===================  =====================================================================

Below the service, each layer keeps its own: ``SettingsError`` (start-up), ``LabelStudioError``
and its subclasses (API and downloads), ``LabelConfigError``, ``ImageError``, ``CheckpointError``.
A task that fails is not an exception once it leaves the pipeline: it is a stored
:class:`~seggpt_backend.service.contract.TaskResult` whose ``error`` names the task and the problem.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of the service's own errors."""


class RequestError(ServiceError, ValueError):
    """A request that is well-formed JSON but cannot be served; answered 422 with the message."""


class ConfigUnsupported(RequestError):
    """The project's labelling config has nothing this backend can predict; the message says why."""


class PromptError(RequestError):
    """The interactive context cannot be answered (e.g. its label has no BrushLabels control)."""


class Unavailable(ServiceError, RuntimeError):
    """Predictions cannot be computed at all right now (e.g. the embedded model failed to load)."""


class ContractError(ServiceError, ValueError):
    """A payload that does not follow the job contract (wrong version, missing or mistyped field)."""


class ExampleError(ServiceError, RuntimeError):
    """An example that cannot be materialised (image gone, undecodable, empty mask...)."""
