from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DistributionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISTRIBUTION_KIND_UNSPECIFIED: _ClassVar[DistributionKind]
    LOG_PROBS: _ClassVar[DistributionKind]
    LOGITS: _ClassVar[DistributionKind]
    LOG_PROBS_F16: _ClassVar[DistributionKind]
DISTRIBUTION_KIND_UNSPECIFIED: DistributionKind
LOG_PROBS: DistributionKind
LOGITS: DistributionKind
LOG_PROBS_F16: DistributionKind

class InfoRequest(_message.Message):
    __slots__ = ("include_tokenizer",)
    INCLUDE_TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    include_tokenizer: bool
    def __init__(self, include_tokenizer: _Optional[bool] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "model_type", "vocab_size", "tokenizer_fingerprint", "max_context", "device", "dtype", "num_parameters", "eot_token_id", "max_sessions", "tokenizer_json", "open_sessions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    EOT_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_JSON_FIELD_NUMBER: _ClassVar[int]
    OPEN_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_type: str
    vocab_size: int
    tokenizer_fingerprint: str
    max_context: int
    device: str
    dtype: str
    num_parameters: int
    eot_token_id: int
    max_sessions: int
    tokenizer_json: str
    open_sessions: int
    def __init__(self, name: _Optional[str] = ..., model_type: _Optional[str] = ..., vocab_size: _Optional[int] = ..., tokenizer_fingerprint: _Optional[str] = ..., max_context: _Optional[int] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., num_parameters: _Optional[int] = ..., eot_token_id: _Optional[int] = ..., max_sessions: _Optional[int] = ..., tokenizer_json: _Optional[str] = ..., open_sessions: _Optional[int] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("token_ids",)
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("prompt", "token")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    prompt: Prompt
    token: int
    def __init__(self, prompt: _Optional[_Union[Prompt, _Mapping]] = ..., token: _Optional[int] = ...) -> None: ...

class Distribution(_message.Message):
    __slots__ = ("data", "kind")
    DATA_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    kind: DistributionKind
    def __init__(self, data: _Optional[bytes] = ..., kind: _Optional[_Union[DistributionKind, str]] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("next", "position")
    NEXT_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    next: Distribution
    position: int
    def __init__(self, next: _Optional[_Union[Distribution, _Mapping]] = ..., position: _Optional[int] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("token_ids", "top_k", "entropy")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    top_k: int
    entropy: bool
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., top_k: _Optional[int] = ..., entropy: _Optional[bool] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("log_probs", "top_ids", "top_log_probs", "entropies")
    LOG_PROBS_FIELD_NUMBER: _ClassVar[int]
    TOP_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOG_PROBS_FIELD_NUMBER: _ClassVar[int]
    ENTROPIES_FIELD_NUMBER: _ClassVar[int]
    log_probs: bytes
    top_ids: bytes
    top_log_probs: bytes
    entropies: bytes
    def __init__(self, log_probs: _Optional[bytes] = ..., top_ids: _Optional[bytes] = ..., top_log_probs: _Optional[bytes] = ..., entropies: _Optional[bytes] = ...) -> None: ...

class OpenSession(_message.Message):
    __slots__ = ("session", "prompt_ids", "tokenizer_fingerprint", "max_wait_ms")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    session: int
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    tokenizer_fingerprint: str
    max_wait_ms: int
    def __init__(self, session: _Optional[int] = ..., prompt_ids: _Optional[_Iterable[int]] = ..., tokenizer_fingerprint: _Optional[str] = ..., max_wait_ms: _Optional[int] = ...) -> None: ...

class StepSessions(_message.Message):
    __slots__ = ("step", "sessions", "tokens", "kind")
    STEP_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    step: int
    sessions: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    kind: DistributionKind
    def __init__(self, step: _Optional[int] = ..., sessions: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[int]] = ..., kind: _Optional[_Union[DistributionKind, str]] = ...) -> None: ...

class CloseSessions(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, sessions: _Optional[_Iterable[int]] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("open", "step", "close")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    open: OpenSession
    step: StepSessions
    close: CloseSessions
    def __init__(self, open: _Optional[_Union[OpenSession, _Mapping]] = ..., step: _Optional[_Union[StepSessions, _Mapping]] = ..., close: _Optional[_Union[CloseSessions, _Mapping]] = ...) -> None: ...

class SessionError(_message.Message):
    __slots__ = ("session", "code", "message")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    session: int
    code: int
    message: str
    def __init__(self, session: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class SessionOpened(_message.Message):
    __slots__ = ("session", "next", "position")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    session: int
    next: Distribution
    position: int
    def __init__(self, session: _Optional[int] = ..., next: _Optional[_Union[Distribution, _Mapping]] = ..., position: _Optional[int] = ...) -> None: ...

class StepResult(_message.Message):
    __slots__ = ("step", "sessions", "data", "kind", "errors")
    STEP_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    step: int
    sessions: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    kind: DistributionKind
    errors: _containers.RepeatedCompositeFieldContainer[SessionError]
    def __init__(self, step: _Optional[int] = ..., sessions: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., kind: _Optional[_Union[DistributionKind, str]] = ..., errors: _Optional[_Iterable[_Union[SessionError, _Mapping]]] = ...) -> None: ...

class BatchResponse(_message.Message):
    __slots__ = ("opened", "stepped", "error")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    STEPPED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    opened: SessionOpened
    stepped: StepResult
    error: SessionError
    def __init__(self, opened: _Optional[_Union[SessionOpened, _Mapping]] = ..., stepped: _Optional[_Union[StepResult, _Mapping]] = ..., error: _Optional[_Union[SessionError, _Mapping]] = ...) -> None: ...
