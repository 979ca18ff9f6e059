"""Wire models: what goes over HTTP (SPEC §3). Requests refuse unknown fields.

One module per part (agents, results, keys, events, system), all re-exported here.
"""

from agentfactory.schemas.agents import ENV_NAME as ENV_NAME
from agentfactory.schemas.agents import INT32_MAX as INT32_MAX
from agentfactory.schemas.agents import MAX_ARTIFACT_GLOBS as MAX_ARTIFACT_GLOBS
from agentfactory.schemas.agents import MAX_ENV_ITEMS as MAX_ENV_ITEMS
from agentfactory.schemas.agents import MAX_ENV_VALUE as MAX_ENV_VALUE
from agentfactory.schemas.agents import MAX_METADATA_ITEMS as MAX_METADATA_ITEMS
from agentfactory.schemas.agents import RESERVED_ENV as RESERVED_ENV
from agentfactory.schemas.agents import AgentCreate as AgentCreate
from agentfactory.schemas.agents import AgentList as AgentList
from agentfactory.schemas.agents import AgentOut as AgentOut
from agentfactory.schemas.agents import Links as Links
from agentfactory.schemas.agents import LogLine as LogLine
from agentfactory.schemas.agents import LogPage as LogPage
from agentfactory.schemas.agents import Timestamp as Timestamp
from agentfactory.schemas.agents import _check_env as _check_env
from agentfactory.schemas.agents import iso as iso
from agentfactory.schemas.events import DeliveryAttempt as DeliveryAttempt
from agentfactory.schemas.events import DeliveryList as DeliveryList
from agentfactory.schemas.events import DeliveryOut as DeliveryOut
from agentfactory.schemas.events import EventOut as EventOut
from agentfactory.schemas.events import WebhookCreate as WebhookCreate
from agentfactory.schemas.events import WebhookCreated as WebhookCreated
from agentfactory.schemas.events import WebhookList as WebhookList
from agentfactory.schemas.events import WebhookOut as WebhookOut
from agentfactory.schemas.events import event_json as event_json
from agentfactory.schemas.keys import KeyCreate as KeyCreate
from agentfactory.schemas.keys import KeyCreated as KeyCreated
from agentfactory.schemas.keys import KeyList as KeyList
from agentfactory.schemas.keys import KeyOut as KeyOut
from agentfactory.schemas.results import AgentResult as AgentResult
from agentfactory.schemas.results import ArtifactItem as ArtifactItem
from agentfactory.schemas.results import ArtifactManifest as ArtifactManifest
from agentfactory.schemas.results import DroppedArtifact as DroppedArtifact
from agentfactory.schemas.results import Seal as Seal
from agentfactory.schemas.results import Timings as Timings
from agentfactory.schemas.results import TokenUsage as TokenUsage
from agentfactory.schemas.results import TtlUpdate as TtlUpdate
from agentfactory.schemas.results import UploadOut as UploadOut
from agentfactory.schemas.system import CapacityOut as CapacityOut
from agentfactory.schemas.system import ErrorBody as ErrorBody
from agentfactory.schemas.system import ErrorDetail as ErrorDetail
from agentfactory.schemas.system import Health as Health
from agentfactory.schemas.system import KeyCapacity as KeyCapacity
from agentfactory.schemas.system import ReplicaOut as ReplicaOut
from agentfactory.schemas.system import ReplicasOut as ReplicasOut
from agentfactory.schemas.system import WarmPool as WarmPool
