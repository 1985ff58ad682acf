// Chat templates. First the real templates of the models bamba serves (Llama-3/3.1, IBM Granite 3.0/3.1/3.3/4.0,
// Tulu 3, Zephyr, ChatML), as their model folders publish them (JSON-decoded), rendered for a system + user +
// assistant + user conversation with and without the generation prompt; then the Jinja features one by one, syntax
// and runtime errors, the limits, and loading a template from a model folder. The expected strings were written
// from the templates and cross-checked against jinja2 3.1.6 set up the way transformers sets it up
// (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, transformers' tojson/raise_exception/
// strftime_now).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "core/error.h"
#include "test_util.h"

namespace bamba {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

// ---------------------------------------------------------------------------------------------------------------
// Real templates

// Meta-Llama-3-8B-Instruct
const char* const kLlama3 = R"TPL({% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>

'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>

' }}{% endif %})TPL";

// Llama-3.1-8B-Instruct (also Llama-3.3-70B-Instruct)
const char* const kLlama31 = R"TPL({{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
)TPL";

// granite-3.0-8b-instruct
const char* const kGranite30 = R"TPL({%- if tools %}
    {{- '<|start_of_role|>available_tools<|end_of_role|>
' }}
    {%- for tool in tools %}
    {{- tool | tojson(indent=4) }}
    {%- if not loop.last %}
        {{- '

' }}
    {%- endif %}
    {%- endfor %}
    {{- '<|end_of_text|>
' }}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
    {{- '<|start_of_role|>system<|end_of_role|>' + message['content'] + '<|end_of_text|>
' }}
    {%- elif message['role'] == 'user' %}
    {{- '<|start_of_role|>user<|end_of_role|>' + message['content'] + '<|end_of_text|>
' }}
    {%- elif message['role'] == 'assistant' %}
    {{- '<|start_of_role|>assistant<|end_of_role|>'  + message['content'] + '<|end_of_text|>
' }}
    {%- elif message['role'] == 'assistant_tool_call' %}
    {{- '<|start_of_role|>assistant<|end_of_role|><|tool_call|>' + message['content'] + '<|end_of_text|>
' }}
    {%- elif message['role'] == 'tool_response' %}
    {{- '<|start_of_role|>tool_response<|end_of_role|>' + message['content'] + '<|end_of_text|>
' }}
    {%- endif %}
    {%- if loop.last and add_generation_prompt %}
    {{- '<|start_of_role|>assistant<|end_of_role|>' }}
    {%- endif %}
{%- endfor %}
)TPL";

// granite-3.1-8b-instruct
const char* const kGranite31 = R"TPL({%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = "Knowledge Cutoff Date: April 2024.
Today's Date: " + strftime_now('%B %d, %Y') + ".
You are Granite, developed by IBM." %}
    {%- if tools and documents %}
        {%- set system_message = system_message + " You are a helpful AI assistant with access to the following tools. When a tool is required to answer the user's query, respond with <|tool_call|> followed by a JSON list of tools used. If a tool does not exist in the provided list of tools, notify the user that you do not have the ability to fulfill the request.

Write the response to the user's input by strictly aligning with the facts in the provided documents. If the information needed to answer the question is not available in the documents, inform the user that the question cannot be answered based on the available data." %}
    {%- elif tools %}
        {%- set system_message = system_message + " You are a helpful AI assistant with access to the following tools. When a tool is required to answer the user's query, respond with <|tool_call|> followed by a JSON list of tools used. If a tool does not exist in the provided list of tools, notify the user that you do not have the ability to fulfill the request." %}
    {%- elif documents %}
        {%- set system_message = system_message + " Write the response to the user's input by strictly aligning with the facts in the provided documents. If the information needed to answer the question is not available in the documents, inform the user that the question cannot be answered based on the available data." %}
    {%- else %}
        {%- set system_message = system_message + " You are a helpful AI assistant." %}    
    {%- endif %}
    {%- if 'citations' in controls and documents %}
        {%- set system_message = system_message + '

In your response, use the symbols <co> and </co> to indicate when a fact comes from a document in the search result, e.g <co>0</co> for a fact from document 0. Afterwards, list all the citations with their corresponding documents in an ordered list.' %}
    {%- endif %}
    {%- if 'hallucinations' in controls and documents %}
        {%- set system_message = system_message + '

Finally, after the response is written, include a numbered list of sentences from the response that are potentially hallucinated and not based in the documents.' %}
    {%- endif %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- '<|start_of_role|>system<|end_of_role|>' + system_message + '<|end_of_text|>
' }}
{%- if tools %}
    {{- '<|start_of_role|>tools<|end_of_role|>' }}
    {{- tools | tojson(indent=4) }}
    {{- '<|end_of_text|>
' }}
{%- endif %}
{%- if documents %}
    {{- '<|start_of_role|>documents<|end_of_role|>' }}
    {%- for document in documents %}
        {{- 'Document ' + loop.index0 | string + '
' }}
        {{- document['text'] }}
        {%- if not loop.last %}
            {{- '

'}}
        {%- endif%}
    {%- endfor %}
    {{- '<|end_of_text|>
' }}
{%- endif %}
{%- for message in loop_messages %}
    {{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + '<|end_of_text|>
' }}
    {%- if loop.last and add_generation_prompt %}
        {{- '<|start_of_role|>assistant' }}
            {%- if controls %}
                {{- ' ' + controls | tojson()}}
            {%- endif %}
        {{- '<|end_of_role|>' }}
    {%- endif %}
{%- endfor %}
)TPL";

// granite-3.3-8b-instruct
const char* const kGranite33 = R"TPL({# Alias tools -> available_tools #}
{%- if tools and not available_tools -%}
    {%- set available_tools = tools -%}
{%- endif -%}
{%- if messages[0]['role'] == 'system' %}
     {%- set system_message = messages[0]['content'] %}
     {%- set loop_messages = messages[1:] %}
 {%- else %}
     {%- set system_message = "Knowledge Cutoff Date: April 2024.\nToday's Date: " + strftime_now('%B %d, %Y') + ".\nYou are Granite, developed by IBM." %}
     {%- if available_tools and documents %}
         {%- set system_message = system_message + " You are a helpful assistant with access to the following tools. When a tool is required to answer the user's query, respond only with <|tool_call|> followed by a JSON list of tools used. If a tool does not exist in the provided list of tools, notify the user that you do not have the ability to fulfill the request.\nWrite the response to the user's input by strictly aligning with the facts in the provided documents. If the information needed to answer the question is not available in the documents, inform the user that the question cannot be answered based on the available data." %}
     {%- elif available_tools %}
         {%- set system_message = system_message + " You are a helpful assistant with access to the following tools. When a tool is required to answer the user's query, respond only with <|tool_call|> followed by a JSON list of tools used. If a tool does not exist in the provided list of tools, notify the user that you do not have the ability to fulfill the request." %}
     {%- elif documents %}
         {%- set system_message = system_message + " Write the response to the user's input by strictly aligning with the facts in the provided documents. If the information needed to answer the question is not available in the documents, inform the user that the question cannot be answered based on the available data." %}
    {%- elif thinking %}
    {%- set system_message = system_message + " You are a helpful AI assistant.\nRespond to every user query in a comprehensive and detailed way. You can write down your thoughts and reasoning process before responding. In the thought process, engage in a comprehensive cycle of analysis, summarization, exploration, reassessment, reflection, backtracing, and iteration to develop well-considered thinking process. In the response section, based on various attempts, explorations, and reflections from the thoughts section, systematically present the final solution that you deem correct. The response should summarize the thought process. Write your thoughts between <think></think> and write your response between <response></response> for each user query." %}
     {%- else %}
         {%- set system_message = system_message + " You are a helpful AI assistant." %}
     {%- endif %}
     {%- if 'citations' in controls and documents %}
         {%- set system_message = system_message + '\nUse the symbols <|start_of_cite|> and <|end_of_cite|> to indicate when a fact comes from a document in the search result, e.g <|start_of_cite|> {document_id: 1}my fact <|end_of_cite|> for a fact from document 1. Afterwards, list all the citations with their corresponding documents in an ordered list.' %}
     {%- endif %}
     {%- if 'hallucinations' in controls and documents %}
         {%- set system_message = system_message + '\nFinally, after the response is written, include a numbered list of sentences from the response with a corresponding risk value that are hallucinated and not based in the documents.' %}
     {%- endif %}
     {%- set loop_messages = messages %}
 {%- endif %}
 {{- '<|start_of_role|>system<|end_of_role|>' + system_message + '<|end_of_text|>\n' }}
 {%- if available_tools %}
     {{- '<|start_of_role|>available_tools<|end_of_role|>' }}
     {{- available_tools | tojson(indent=4) }}
     {{- '<|end_of_text|>\n' }}
 {%- endif %}
 {%- if documents %}
     {%- for document in documents %}
         {{- '<|start_of_role|>document {"document_id": "' + document['doc_id'] | string + '"}<|end_of_role|>\n' }}
         {{- document['text'] }}
         {{- '<|end_of_text|>\n' }}
              {%- endfor %}
 {%- endif %}
 {%- for message in loop_messages %}
     {{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + '<|end_of_text|>\n' }}
     {%- if loop.last and add_generation_prompt %}
         {{- '<|start_of_role|>assistant' }}
             {%- if controls %}
                 {{- ' ' + controls | tojson()}}
             {%- endif %}
         {{- '<|end_of_role|>' }}
     {%- endif %}
 {%- endfor %}
)TPL";

// granite-4.0-h-micro (chat_template.jinja)
const char* const kGranite40 = R"TPL({%- set tools_system_message_prefix = 'You are a helpful assistant with access to the following tools. You may call one or more tools to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>'  %}
{%- set tools_system_message_suffix = '\n</tools>\n\nFor each tool call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>.\n\n## How to call tools:\nWhen you call a tool call, the value of "arguments" must be a valid, parsed JSON object. It must NEVER be stringified JSON. Do NOT EVER escape JSON yourself. Always provide raw, valid JSON.\n\nIf a tool does not exist in the provided list of tools, notify the user that you do not have the ability to fulfill the request.\n\nFor example, your tool call SHOULD look like this\n<tool_call>\n{"name": "get_current_weather", "arguments": {"city": "Boston"}}\n</tool_call>\n\nIt should NEVER look like this\n<tool_call>\n{"name": "get_current_weather", "arguments": "{\n  \"city\": \"Boston\"\n}"}\n</tool_call>' %}
{%- set documents_system_message_prefix = 'You are a helpful assistant with access to the following documents. You may use one or more documents to assist with the user query.\n\nYou are given a list of documents within <documents></documents> XML tags:\n<documents>' %}
{%- set documents_system_message_suffix = '\n</documents>\n\nWrite the response to the user\'s input by strictly aligning with the facts in the provided documents. If the information needed to answer the question is not available in the documents, inform the user that the question cannot be answered based on the available data.' %}
{%- if available_tools is defined and available_tools %}
    {%- set tools = available_tools %}
{%- endif %}
{%- set ns = namespace(tools_system_message=tools_system_message_prefix,
                      documents_system_message=documents_system_message_prefix,
                      system_message=''
                      ) %}
{%- if tools %}
    {%- for tool in tools %}
        {%- set ns.tools_system_message = ns.tools_system_message + '\n' + (tool | tojson) %}
    {%- endfor %}
    {%- set ns.tools_system_message = ns.tools_system_message + tools_system_message_suffix %}
{%- else %}
    {%- set ns.tools_system_message = '' %}
{%- endif %}
{%- if documents %}
    {%- for document in documents %}
        {%- set ns.documents_system_message = ns.documents_system_message + '\n' + (document | tojson) %}
    {%- endfor %}
    {%- set ns.documents_system_message = ns.documents_system_message + documents_system_message_suffix %}
{%- else %}
    {%- set ns.documents_system_message = '' %}
{%- endif %}
{%- if messages[0].role == 'system' %}
    {%- if messages[0].content is string %}
        {%- set ns.system_message = messages[0].content %}
    {%- elif messages[0].content is iterable %}
        {%- for entry in messages[0].content %}
            {%- if entry.type== 'text' %}
                {%- if ns.system_message != '' %}
                    {%- set ns.system_message = ns.system_message + '\n' %}
                {%- endif %}
                {%- set ns.system_message = ns.system_message + entry.text %}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
    {%- if tools and documents %}
        {%- set ns.system_message = ns.system_message + '\n\n' +  ns.tools_system_message + '\n\n' + ns.documents_system_message %}
    {%- elif tools %}
        {%- set ns.system_message = ns.system_message + '\n\n' + ns.tools_system_message %}
    {%- elif documents %}
        {%- set ns.system_message = ns.system_message + '\n\n' + ns.documents_system_message %}
    {%- endif %}
{%- else %}
    {%- if tools and documents %}
        {%- set ns.system_message = ns.tools_system_message + '\n\n' + ns.documents_system_message  %}
    {%- elif tools %}
        {%- set ns.system_message = ns.tools_system_message %}
    {%- elif documents %}
        {%- set ns.system_message = ns.documents_system_message %}
    {%- endif %}
{%- endif %}
{%- if ns.system_message %}
    {{- '<|start_of_role|>system<|end_of_role|>' + ns.system_message + '<|end_of_text|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- set content = namespace(val='') %}
    {%- if message.content is string %}
        {%- set content.val = message.content %}
    {%- else %}
        {%- if message.content is iterable %}
            {%- for entry in message.content %}
                {%- if entry.type== 'text' %}
                    {%- if content.val != '' %}
                        {%- set content.val = content.val + '\n' %}
                    {%- endif %}
                    {%- set content.val = content.val + entry.text %}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
    {%- endif %}
    {%- if (message.role == 'user') or (message.role == 'system' and not loop.first) %}
        {{- '<|start_of_role|>' + message.role + '<|end_of_role|>' + content.val + '<|end_of_text|>\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|start_of_role|>' + message.role + '<|end_of_role|>' + content.val }}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content.val) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|end_of_text|>\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or (messages[loop.index0 - 1].role != 'tool') %}
            {{- '<|start_of_role|>user<|end_of_role|>' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content.val }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}
            {{- '<|end_of_text|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_of_role|>assistant<|end_of_role|>' }}
{%- endif %}
)TPL";

// Llama-3.1-Tulu-3-8B (and OLMo-2 SFT)
const char* const kTulu3 = R"TPL({% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>
' + message['content'] + '
' }}{% elif message['role'] == 'user' %}{{ '<|user|>
' + message['content'] + '
' }}{% elif message['role'] == 'assistant' %}{% if not loop.last %}{{ '<|assistant|>
'  + message['content'] + eos_token + '
' }}{% else %}{{ '<|assistant|>
'  + message['content'] + eos_token }}{% endif %}{% endif %}{% if loop.last and add_generation_prompt %}{{ '<|assistant|>
' }}{% endif %}{% endfor %})TPL";

// zephyr-7b-beta
const char* const kZephyr = R"TPL({% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %})TPL";

// ChatML (OpenHermes-2.5 / Qwen style)
const char* const kChatML = R"TPL({% for message in messages %}{{'<|im_start|>' + message['role'] + '
' + message['content'] + '<|im_end|>' + '
'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant
' }}{% endif %})TPL";

const char* const kGraniteWithPrompt =
    "<|start_of_role|>system<|end_of_role|>You are a helpful assistant.<|end_of_text|>\n"
    "<|start_of_role|>user<|end_of_role|>Hello!<|end_of_text|>\n"
    "<|start_of_role|>assistant<|end_of_role|>Hi there! How can I help?<|end_of_text|>\n"
    "<|start_of_role|>user<|end_of_role|>What is 2+2?<|end_of_text|>\n"
    "<|start_of_role|>assistant<|end_of_role|>";
const char* const kGraniteWithoutPrompt =
    "<|start_of_role|>system<|end_of_role|>You are a helpful assistant.<|end_of_text|>\n"
    "<|start_of_role|>user<|end_of_role|>Hello!<|end_of_text|>\n"
    "<|start_of_role|>assistant<|end_of_role|>Hi there! How can I help?<|end_of_text|>\n"
    "<|start_of_role|>user<|end_of_role|>What is 2+2?<|end_of_text|>\n";

const char* const kConversation = R"([
  {"role": "system", "content": "You are a helpful assistant."},
  {"role": "user", "content": "Hello!"},
  {"role": "assistant", "content": "Hi there! How can I help?"},
  {"role": "user", "content": "What is 2+2?"}
])";

struct RealCase {
  const char* name;
  const char* source;
  const char* bos;  // the model's special tokens (nullptr: the model has none)
  const char* eos;
  const char* with_prompt;
  const char* without_prompt;
};

const RealCase kRealCases[] = {
    {"Llama3", kLlama3, "<|begin_of_text|>", "<|eot_id|>",
     "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
     "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
     "<|start_header_id|>assistant<|end_header_id|>\n\nHi there! How can I help?<|eot_id|>"
     "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
     "<|start_header_id|>assistant<|end_header_id|>\n\n",
     "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
     "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
     "<|start_header_id|>assistant<|end_header_id|>\n\nHi there! How can I help?<|eot_id|>"
     "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"},
    {"Llama31", kLlama31, "<|begin_of_text|>", "<|eot_id|>",
     "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
     "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are a helpful assistant.<|eot_id|>"
     "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
     "<|start_header_id|>assistant<|end_header_id|>\n\nHi there! How can I help?<|eot_id|>"
     "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
     "<|start_header_id|>assistant<|end_header_id|>\n\n",
     "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
     "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are a helpful assistant.<|eot_id|>"
     "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
     "<|start_header_id|>assistant<|end_header_id|>\n\nHi there! How can I help?<|eot_id|>"
     "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"},
    // The four Granite templates agree on this conversation: with a system message none of their default system
    // prompts, tools or documents branches is taken.
    {"Granite30", kGranite30, "<|end_of_text|>", "<|end_of_text|>", kGraniteWithPrompt, kGraniteWithoutPrompt},
    {"Granite31", kGranite31, "<|end_of_text|>", "<|end_of_text|>", kGraniteWithPrompt, kGraniteWithoutPrompt},
    {"Granite33", kGranite33, "<|end_of_text|>", "<|end_of_text|>", kGraniteWithPrompt, kGraniteWithoutPrompt},
    {"Granite40", kGranite40, "<|end_of_text|>", "<|end_of_text|>", kGraniteWithPrompt, kGraniteWithoutPrompt},
    {"Tulu3", kTulu3, "<|begin_of_text|>", "<|end_of_text|>",
     "<|system|>\nYou are a helpful assistant.\n<|user|>\nHello!\n<|assistant|>\nHi there! How can I help?"
     "<|end_of_text|>\n<|user|>\nWhat is 2+2?\n<|assistant|>\n",
     "<|system|>\nYou are a helpful assistant.\n<|user|>\nHello!\n<|assistant|>\nHi there! How can I help?"
     "<|end_of_text|>\n<|user|>\nWhat is 2+2?\n"},
    {"Zephyr", kZephyr, "<s>", "</s>",
     "<|system|>\nYou are a helpful assistant.</s>\n<|user|>\nHello!</s>\n<|assistant|>\nHi there! How can I help?"
     "</s>\n<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n",
     "<|system|>\nYou are a helpful assistant.</s>\n<|user|>\nHello!</s>\n<|assistant|>\nHi there! How can I help?"
     "</s>\n<|user|>\nWhat is 2+2?</s>\n"},
    {"ChatML", kChatML, nullptr, "<|im_end|>",
     "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n"
     "<|im_start|>assistant\nHi there! How can I help?<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
     "<|im_start|>assistant\n",
     "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n"
     "<|im_start|>assistant\nHi there! How can I help?<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"},
};

ChatTemplate model_template(const char* source, const char* bos, const char* eos) {
  ChatTemplate t = ChatTemplate::parse(source, "test template");
  if (bos) t.bos_token = bos;
  if (eos) t.eos_token = eos;
  return t;
}

class RealTemplates : public ::testing::TestWithParam<RealCase> {};

TEST_P(RealTemplates, RenderTheConversationExactly) {
  const RealCase& c = GetParam();
  ChatTemplate t = model_template(c.source, c.bos, c.eos);
  EXPECT_EQ(t.render(json::parse(kConversation), true), c.with_prompt);
  EXPECT_EQ(t.render(json::parse(kConversation), false), c.without_prompt);
  // The ordered_json overload renders the same here (no key order is visible in this conversation).
  EXPECT_EQ(t.render(ordered_json::parse(kConversation), true), c.with_prompt);
}

INSTANTIATE_TEST_SUITE_P(Chat, RealTemplates, ::testing::ValuesIn(kRealCases),
                         [](const auto& info) { return std::string(info.param.name); });

// strftime_now reads the local clock, as datetime.now() does in transformers; tests pin the time and the zone.
void pin_clock(ChatTemplate& t) {
  setenv("TZ", "UTC", 1);
  tzset();
  t.now = 1721044800;  // 2024-07-15 12:00:00 UTC
}

TEST(RealTemplates, GraniteWithoutSystemMessageWritesItsDefaultOneWithTodaysDate) {
  const char* expected =
      "<|start_of_role|>system<|end_of_role|>Knowledge Cutoff Date: April 2024.\nToday's Date: July 15, 2024.\n"
      "You are Granite, developed by IBM. You are a helpful AI assistant.<|end_of_text|>\n"
      "<|start_of_role|>user<|end_of_role|>Hello!<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>";
  for (const char* source : {kGranite31, kGranite33}) {
    ChatTemplate t = model_template(source, "<|end_of_text|>", "<|end_of_text|>");
    pin_clock(t);
    EXPECT_EQ(t.render(json::parse(R"([{"role": "user", "content": "Hello!"}])"), true), expected);
  }
}

TEST(RealTemplates, Granite33ThinkingSystemPrompt) {
  ChatTemplate t = model_template(kGranite33, "<|end_of_text|>", "<|end_of_text|>");
  pin_clock(t);
  std::string out = t.render(json::parse(R"([{"role": "user", "content": "Hello!"}])"), true, {{"thinking", true}});
  const std::string head =
      "<|start_of_role|>system<|end_of_role|>Knowledge Cutoff Date: April 2024.\nToday's Date: July 15, 2024.\n"
      "You are Granite, developed by IBM. You are a helpful AI assistant.\nRespond to every user query";
  EXPECT_EQ(out.substr(0, head.size()), head);
  EXPECT_NE(out.find("Write your thoughts between <think></think> and write your response between "
                     "<response></response> for each user query.<|end_of_text|>\n"
                     "<|start_of_role|>user<|end_of_role|>Hello!<|end_of_text|>\n"
                     "<|start_of_role|>assistant<|end_of_role|>"),
            std::string::npos);
}

const char* const kWeatherTool = R"([{"type": "function", "function": {"name": "get_weather",
  "description": "Current weather", "parameters": {"type": "object",
  "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])";

TEST(RealTemplates, Granite40WithToolsAndDocuments) {
  ChatTemplate t = model_template(kGranite40, "<|end_of_text|>", "<|end_of_text|>");
  ordered_json extra = {{"tools", ordered_json::parse(kWeatherTool)},
                        {"documents", ordered_json::parse(R"([{"doc_id": "1", "text": "Paris is in France."}])")}};
  std::string out = t.render(ordered_json::parse(R"([{"role": "user", "content": "Hello!"}])"), true, extra);
  EXPECT_EQ(out,
            "<|start_of_role|>system<|end_of_role|>You are a helpful assistant with access to the following tools. "
            "You may call one or more tools to assist with the user query.\n\nYou are provided with function "
            "signatures within <tools></tools> XML tags:\n<tools>\n"
            "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Current weather\", "
            "\"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, "
            "\"required\": [\"city\"]}}}\n</tools>\n\nFor each tool call, return a json object with function name and "
            "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
            "\"arguments\": <args-json-object>}\n</tool_call>.\n\n## How to call tools:\nWhen you call a tool call, "
            "the value of \"arguments\" must be a valid, parsed JSON object. It must NEVER be stringified JSON. Do NOT "
            "EVER escape JSON yourself. Always provide raw, valid JSON.\n\nIf a tool does not exist in the provided "
            "list of tools, notify the user that you do not have the ability to fulfill the request.\n\nFor example, "
            "your tool call SHOULD look like this\n<tool_call>\n{\"name\": \"get_current_weather\", \"arguments\": "
            "{\"city\": \"Boston\"}}\n</tool_call>\n\nIt should NEVER look like this\n<tool_call>\n{\"name\": "
            "\"get_current_weather\", \"arguments\": \"{\n  \"city\": \"Boston\"\n}\"}\n</tool_call>\n\n"
            "You are a helpful assistant with access to the following documents. You may use one or more documents "
            "to assist with the user query.\n\nYou are given a list of documents within <documents></documents> XML "
            "tags:\n<documents>\n{\"doc_id\": \"1\", \"text\": \"Paris is in France.\"}\n</documents>\n\nWrite the "
            "response to the user's input by strictly aligning with the facts in the provided documents. If the "
            "information needed to answer the question is not available in the documents, inform the user that the "
            "question cannot be answered based on the available data.<|end_of_text|>\n"
            "<|start_of_role|>user<|end_of_role|>Hello!<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>");
}

TEST(RealTemplates, Llama31WithToolsPutsThemInTheFirstUserMessage) {
  ChatTemplate t = model_template(kLlama31, "<|begin_of_text|>", "<|eot_id|>");
  auto messages = ordered_json::parse(R"([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": null,
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "{\"temp_c\": 21}"}])");
  std::string out = t.render(messages, true, {{"tools", ordered_json::parse(kWeatherTool)}});
  EXPECT_EQ(out,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with a JSON "
            "for a function call with its proper arguments that best answers the given prompt.\n\nRespond in the "
            "format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.Do not use "
            "variables.\n\n{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"get_weather\",\n"
            "        \"description\": \"Current weather\",\n        \"parameters\": {\n            \"type\": "
            "\"object\",\n            \"properties\": {\n                \"city\": {\n                    \"type\": "
            "\"string\"\n                }\n            },\n            \"required\": [\n                \"city\"\n"
            "            ]\n        }\n    }\n}\n\nWeather in Paris?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", \"parameters\": "
            "{\"city\": \"Paris\"}}<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\n"
            // the real template's quirk: a string tool result "is iterable", so it is JSON-quoted
            "\"{\\\"temp_c\\\": 21}\"<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
}

// ---------------------------------------------------------------------------------------------------------------
// Jinja features, each template rendered with `vars` (a JSON object) and no messages

struct Snippet {
  const char* source;
  const char* vars;
  const char* want;
};

const Snippet kWhitespace[] = {
    {R"({% if true %}
  yes
{% endif %}
after)", "{}",
     R"(  yes
after)"},
    {"  {% if true %}x{% endif %}  \n  {%- if true %} y{% endif -%}  \n z", "{}",
     R"(x yz)"},
    {R"(a  {%- if true -%}  b  {%- endif -%}  c)", "{}",
     R"(abc)"},
    {R"(a
  {{ 'var' }}
  {# comment #}
b)", "{}",
     R"(a
  var
b)"},
    {R"(a {# c #} b
{#- c -#}
 c)", "{}",
     R"(a  bc)"},
    {R"({%+ if true %}+ keeps indentation{% endif +%}
next)", "{}",
     R"(+ keeps indentation
next)"},
    {"  {{- 'x' -}}  \n  y", "{}",
     R"(xy)"},
    {"line\r\nnext\rlast\n", "{}",
     R"(line
next
last)"},
    {R"(keeps one of two trailing newlines

)", "{}",
     R"(keeps one of two trailing newlines
)"},
    {R"({% for i in range(3) %}
  {{ i }}
{% endfor %}
)", "{}",
     R"(  0
  1
  2
)"},
    {R"({% raw %}{{ not evaluated }}{% if %}{% endraw %})", "{}",
     R"({{ not evaluated }}{% if %})"},
};

const Snippet kExpressions[] = {
    {R"({{ 1 + 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 2 * 3 + 4 }} {{ (2 + 3) * 4 }})", "{}",
     R"(3 3 -4 2 3.5 1024 10 20)"},
    {R"({{ 1.0 }} {{ 1e20 }} {{ 0.1 + 0.2 }} {{ 1e-5 }} {{ 10 / 4 }} {{ 3 * 1.5 }} {{ -5 % 2.5 }} {{ 0x1f }} {{ 1_000 }})", "{}",
     R"(1.0 1e+20 0.30000000000000004 1e-05 2.5 4.5 0.0 31 1000)"},
    {R"({{ 'a' ~ 1 ~ none ~ true }} {{ 'ab' 'cd' }} {{ 'x' * 3 }} {{ [1] + [2] }} {{ [0] * 2 }})", "{}",
     R"(a1NoneTrue abcd xxx [1, 2] [0, 0])"},
    {R"({{ [1, 'a', none, true, 1.5] }} {{ {'a': 1, 'b': [1, 2]} }} {{ (1, 2) }} {{ ('x',) }} {{ "it's" }} {{ ['it\'s', "q\""] }})", "{}",
     R"([1, 'a', None, True, 1.5] {'a': 1, 'b': [1, 2]} (1, 2) ('x',) it's ["it's", 'q"'])"},
    {R"({{ '%s' % [1, 2] }} {{ 'x' % [] }} {{ '%s|%s' % (1, 'a') }} {{ '%(a)s' % {'a': 1} }} {{ '%5.1f|%-4d|%x' % (3.14159, 7, 255) }})", "{}",
     R"([1, 2] x 1|a 1   3.1|7   |ff)"},
    {R"({{ 'tab\there' }}|{{ 'nl\nhere' }}|{{ '\u00e9\x41' }}|{{ "a\\b" }})", "{}",
     "tab\there|nl\nhere|éA|a\\b"},
    {R"({{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1.0 }} {{ true == 1 }} {{ [1, [2]] == [1, [2]] }} {{ 'a' < 'b' }} {{ 1 != 2 }})", "{}",
     R"(True False True True True True True)"},
    {R"({{ 'a' in 'abc' }} {{ 'z' not in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'x' in nothing }})", "{}",
     R"(True True True True False)"},
    {R"({{ 1 and 2 }} {{ 0 and 2 }} {{ 0 or 'x' }} {{ not 0 }} {{ not not 'a' }} {{ 'y' if 1 else 'n' }} {{ 'y' if 0 else 'n' }} [{{ 'y' if 0 }}])", "{}",
     R"(2 0 x True True y n [])"},
    {R"({{ -x }} {{ +x }} {{ -x | abs }} {{ x.y }})", R"({"x": 3})",
     "-3 3 3 "},
    {R"({{ d.a }} {{ d['a'] }} {{ d.b.c }} {{ l[0] }} {{ l[-1] }} {{ l.1 }} {{ l[5] }}|{{ d.zz }}|)", R"({"d": {"a": 1, "b": {"c": "deep"}}, "l": [10, 20, 30]})",
     R"(1 1 deep 10 30 20 ||)"},
    {R"({{ 'abcdef'[1:3] }} {{ 'abcdef'[::-1] }} {{ 'abcdef'[-2:] }} {{ [1, 2, 3, 4][1:] }} {{ [1, 2, 3, 4][:-1] }} {{ [1, 2, 3, 4][::2] }} {{ [1, 2, 3, 4, 5][-2:0:-1] }} {{ 'héllo'[1] }})", "{}",
     R"(bc fedcba ef [2, 3, 4] [1, 2, 3] [1, 3] [4, 3, 2] é)"},
};

const Snippet kStatements[] = {
    {R"({% for k, v in {'x': 1, 'y': 2}.items() %}{{ k }}={{ v }}{% if not loop.last %},{% endif %}{% endfor %})", "{}",
     R"(x=1,y=2)"},
    {R"({% for i in [] %}x{% else %}empty{% endfor %})", "{}",
     R"(empty)"},
    {R"({% for i in range(10) if i is odd %}{{ loop.index }}/{{ loop.length }}:{{ i }} {% endfor %})", "{}",
     "1/5:1 2/5:3 3/5:5 4/5:7 5/5:9 "},
    {R"({% for x in 'abc' %}{{ loop.index0 }}{{ loop.revindex }}{{ loop.first }}{{ loop.last }}{{ loop.previtem }}{{ loop.nextitem }}{{ loop.cycle('o', 'e') }};{% endfor %})", "{}",
     R"(03TrueFalsebo;12FalseFalseace;21FalseTruebo;)"},
    {R"({% for i in range(6) %}{% if i == 4 %}{% break %}{% endif %}{% if i is even %}{% continue %}{% endif %}{{ i }}{% endfor %})", "{}",
     R"(13)"},
    // jinja2 runs a for's else unless some iteration reached the end of its body
    {R"({% for i in [1, 2] %}{% break %}{% else %}else{% endfor %}|{% for i in [1, 2] %}{% if i == 2 %}{% continue %}{% endif %}{{ i }}{% else %}else{% endfor %}|{% for i in [1, 2] %}{% continue %}{% else %}else{% endfor %})", "{}",
     R"(else|1|else)"},
    {R"({% if x == 1 %}one{% elif x == 2 %}two{% elif x == 3 %}three{% else %}other{% endif %})", R"({"x": 3})",
     R"(three)"},
    {R"({% set a, b = [1, 2] %}{{ a }}{{ b }} {% set t = 1, 2 %}{{ t }} {% for (p, q) in [[1, 2]] %}{{ p }}{{ q }}{% endfor %})", "{}",
     R"(12 (1, 2) 12)"},
    {R"({{ 1, 'a' }} {{ (1,) }} {{ () }})", "{}",
     R"((1, 'a') (1,) ())"},
    {R"({% macro greet(name, punct='!') %}Hello {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} {{ greet(punct='.', name='C') }})", "{}",
     R"(Hello A! Hello B? Hello C.)"},
    {R"({% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}bold{% endcall %} {% macro twice(x) %}{{ caller(x * 2) }}{% endmacro %}{% call(v) twice(21) %}v={{ v }}{% endcall %})", "{}",
     R"(<b>bold</b> v=42)"},
    {R"({% filter upper %}shout {{ 'this' }}{% endfilter %} {% set blk %}captured {{ 1 + 1 }}{% endset %}[{{ blk }}] {% with a = 1, b = 2 %}{{ a + b }}{% endwith %} {% generation %}gen{% endgeneration %})", "{}",
     R"(SHOUT THIS [captured 2] 3 gen)"},
};

const Snippet kScoping[] = {
    {R"({% set x = 'outer' %}{% for i in range(2) %}{% set x = i %}{{ x }}{% endfor %} {{ x }})", "{}",
     R"(01 outer)"},
    {R"({% set ns = namespace(total=0, seen=[]) %}{% for i in range(4) %}{% set ns.total = ns.total + i %}{% set ns.seen = ns.seen + [i] %}{% endfor %}{{ ns.total }} {{ ns.seen }})", "{}",
     R"(6 [0, 1, 2, 3])"},
    {R"({% if true %}{% set y = 'set in if' %}{% endif %}{{ y }})", "{}",
     R"(set in if)"},
    {R"({% set found = false %}{% for m in [1, 2] %}{% if m == 2 %}{% set found = true %}{% endif %}{% endfor %}{{ found }})", "{}",
     R"(False)"},
    {R"({% set x = x[1:] %}{{ x | length }})", R"({"x": [1, 2, 3]})",
     R"(2)"},
    {R"({% macro m() %}{% set inner = 1 %}{{ outer }}{% endmacro %}{% set outer = 'seen' %}{{ m() }}{{ inner }})", "{}",
     R"(seen)"},
};

const Snippet kFilters[] = {
    {R"({{ '  hi  ' | trim }}|{{ 'xxhixx' | trim('x') }}|{{ 'Hello World' | lower }}|{{ 'hello' | upper }}|{{ "hello world-foo bar's" | title }}|{{ 'hELLO' | capitalize }})", "{}",
     R"(hi|hi|hello world|HELLO|Hello World-Foo Bar's|Hello)"},
    {R"({{ 'aaa' | replace('a', 'b', 2) }}|{{ 'abc' | replace('', '-') }}|{{ ['a', 'b'] | join(', ') }}|{{ [1, 2] | join }}|{{ [{'n': 'x'}, {'n': 'y'}] | join('+', attribute='n') }})", "{}",
     R"(bba|-a-b-c-|a, b|12|x+y)"},
    {R"({{ [1, 2] | length }} {{ 'héllo' | length }} {{ {'a': 1} | count }} {{ [1, 2, 3] | first }} {{ [1, 2, 3] | last }} {{ 'abc' | first }} {{ [1, 2] | reverse | list }} {{ 'abc' | reverse }})", "{}",
     R"(2 5 1 1 3 a [2, 1] cba)"},
    {R"({{ none | default('d') }}|{{ nothing | default('d') }}|{{ '' | default('d', true) }}|{{ '' | d('x') }}|{{ 0 | default(5) }}|{{ nothing | d }}|)", "{}",
     R"(None|d|d||0||)"},
    {R"({{ {'a': [1, 2.5, 'x\n"y"', none, true], 'é': {}} | tojson }} {{ '<&>\'' | tojson }} {{ 'é' | tojson(ensure_ascii=true) }} {{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }} {{ [] | tojson(indent=2) }})", "{}",
     R"({"a": [1, 2.5, "x\n\"y\"", null, true], "é": {}} "<&>'" "\u00e9" {"a": 2, "b": 1} [])"},
    {R"({{ {'b': 1, 'a': [1, {'c': []}, {}]} | tojson(indent=2) }})", "{}",
     R"({
  "b": 1,
  "a": [
    1,
    {
      "c": []
    },
    {}
  ]
})"},
    {R"({{ tools | tojson(indent=4) }})", R"({"tools": [{"name": "f", "parameters": {"x": {"type": "integer"}}}]})",
     R"([
    {
        "name": "f",
        "parameters": {
            "x": {
                "type": "integer"
            }
        }
    }
])"},
    {R"({{ '42' | int }} {{ '4.7' | int }} {{ 'x' | int(7) }} {{ 4.9 | int }} {{ '3.5' | float }} {{ 3 | float }} {{ 5 | string }} {{ [1] | string }} {{ -3 | abs }} {{ 2.5 | round }} {{ 3.14159 | round(2) }})", "{}",
     R"(42 4 7 4 3.5 3.0 5 [1] 3 2.0 3.14)"},
    {R"({{ 'ab' | list }} {{ {'b': 1, 'a': 2} | items | list }} {{ {'b': 1, 'a': 2} | dictsort }} {{ [3, 1, 2] | sort }} {{ ['b', 'A', 'c'] | sort }} {{ [3, 1, 2] | sort(reverse=true) }} {{ [1, 1, 2, 'a', 'A'] | unique | list }})", "{}",
     R"(['a', 'b'] [('b', 1), ('a', 2)] [('a', 2), ('b', 1)] [1, 2, 3] ['A', 'b', 'c'] [3, 2, 1] [1, 2, 'a'])"},
    {R"({{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }} {{ msgs | rejectattr('role', 'eq', 'user') | list | length }} {{ msgs | selectattr('extra') | list | length }} {{ msgs | selectattr('extra', 'defined') | list | length }})", R"({"msgs": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "extra": 0}, {"role": "user", "content": "c"}]})",
     R"(a,c 1 0 1)"},
    {R"({{ [1, 2, 3, 4] | select('even') | list }} {{ [1, 2, 3, 4] | reject('odd') | list }} {{ ['a', 'b'] | map('upper') | join }} {{ [{'n': 2}, {'n': 1}] | sort(attribute='n') | map(attribute='n') | list }} {{ [{'a': 1}, {}] | map(attribute='a', default=0) | list }})", "{}",
     R"([2, 4] [2, 4] AB [1, 2] [1, 0])"},
    {R"({{ [1, 2, 3] | sum }} {{ [1, 2, 3] | max }} {{ ['b', 'A'] | min }} {{ 'line1\nline2\n\nline4' | indent(2) }}|{{ 'x\ny' | indent(2, true) }}|{{ 'a b  c' | wordcount }} {{ '<&>' | e }} {{ '<b>' | safe }} {{ '%s is %d' | format('Tom', 30) }} {{ d | attr('k') }})", R"({"d": {"k": "v"}})",
     "6 3 A line1\n  line2\n\n  line4|  x\n  y|3 &lt;&amp;&gt; <b> Tom is 30 "},
    {R"({{ namespace(k='v') | attr('k') }}|{{ d | attr('k') }})", R"({"d": {"k": "v"}})",
     R"(v|)"},
};

const Snippet kTests[] = {
    {R"({{ x is defined }} {{ y is defined }} {{ y is undefined }} {{ none is none }} {{ 1 is number }} {{ true is number }} {{ true is boolean }} {{ 1 is integer }} {{ true is integer }} {{ 1.0 is float }})", R"({"x": 1})",
     R"(True False True True True True True True False True)"},
    {R"({{ 's' is string }} {{ {} is mapping }} {{ [] is iterable }} {{ 's' is iterable }} {{ {} is iterable }} {{ [] is sequence }} {{ 1 is iterable }} {{ range is callable }} {{ tools is none }} {{ documents is none }})", "{}",
     R"(True True True True True True False True True True)"},
    {R"({{ 3 is divisibleby 3 }} {{ 4 is even }} {{ 3 is odd }} {{ 'a' is in 'abc' }} {{ 2 is in [1, 2] }} {{ 'abc' is lower }} {{ 'ABC' is upper }} {{ 1 is eq 1 }} {{ 1 is ne 2 }} {{ 1 is lt 2 }} {{ 2 is ge 2 }} {{ none is sameas none }} {{ true is true }} {{ 0 is false }})", "{}",
     R"(True True True True True True True True True True True True True False)"},
    {R"({{ x is not none }} {{ x is not defined }} {{ 'user' is equalto 'user' }})", R"({"x": 0})",
     R"(True False True)"},
};

const Snippet kMethods[] = {
    {R"({{ 'a,b,,c'.split(',') }} {{ '  a  b c '.split() }} {{ 'a b c'.split(none, 1) }} {{ 'a,b,c'.rsplit(',', 1) }} {{ 'x\ny\r\nz'.splitlines() }} {{ 'a<think>b</think>c'.split('</think>')[-1] }})", "{}",
     R"(['a', 'b', '', 'c'] ['a', 'b', 'c'] ['a', 'b c'] ['a,b', 'c'] ['x', 'y', 'z'] c)"},
    {R"([{{ '  x '.strip() }}] [{{ 'xxyxx'.lstrip('x') }}] [{{ '\n\nabc\n'.rstrip('\n') }}] [{{ '  x '.lstrip() }}] {{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'héllo'.find('l') }} {{ 'hello'.count('l') }})", "{}",
     R"([x] [yxx] [

abc] [x ] True True 2 2)"},
    {R"({{ '{} and {name}'.format(1, name='n') }} {{ "they're bill".title() }} {{ ','.join(['a', 'b']) }} {{ 'abc'.upper() }} {{ 'ABC'.lower() }} {{ 'hello world'.capitalize() }} {{ 'aXa'.replace('a', 'b') }} {{ 'ab12'.isalnum() }} {{ '12'.isdigit() }})", "{}",
     R"(1 and n They'Re Bill a,b ABC abc Hello world bXb True True)"},
    {R"({{ d.get('a') }} {{ d.get('b', 'no') }} {{ d.get('b') }} {{ d.keys() | list }} {{ d.values() | list }} {{ d.items() | list }} {{ [1, 2, 1].count(1) }} {{ [1, 2].index(2) }})", R"({"d": {"a": 1, "z": 2}})",
     R"(1 no None ['a', 'z'] [1, 2] [('a', 1), ('z', 2)] 2 1)"},
};

const Snippet kGlobals[] = {
    {R"({{ range(3) | list }} {{ range(1, 10, 3) | list }} {{ range(5, 0, -2) | list }} {{ dict(a=1, b='x') }} {{ namespace(a=1).a }})", "{}",
     R"([0, 1, 2] [1, 4, 7] [5, 3, 1] {'a': 1, 'b': 'x'} 1)"},
};

void expect_renders(const Snippet* begin, const Snippet* end) {
  for (const Snippet* s = begin; s != end; ++s) {
    SCOPED_TRACE(s->source);
    ChatTemplate t = ChatTemplate::parse(s->source, "snippet");
    EXPECT_EQ(t.render(ordered_json::array(), false, ordered_json::parse(s->vars)), s->want);
  }
}

TEST(JinjaFeatures, WhitespaceControlAsTransformersConfiguresIt) { expect_renders(std::begin(kWhitespace), std::end(kWhitespace)); }
TEST(JinjaFeatures, Expressions) { expect_renders(std::begin(kExpressions), std::end(kExpressions)); }
TEST(JinjaFeatures, Statements) { expect_renders(std::begin(kStatements), std::end(kStatements)); }
TEST(JinjaFeatures, Scoping) { expect_renders(std::begin(kScoping), std::end(kScoping)); }
TEST(JinjaFeatures, Filters) { expect_renders(std::begin(kFilters), std::end(kFilters)); }
TEST(JinjaFeatures, Tests) { expect_renders(std::begin(kTests), std::end(kTests)); }
TEST(JinjaFeatures, Methods) { expect_renders(std::begin(kMethods), std::end(kMethods)); }
TEST(JinjaFeatures, Globals) { expect_renders(std::begin(kGlobals), std::end(kGlobals)); }

std::string render(std::string_view source, const char* vars = "{}") {
  return ChatTemplate::parse(source, "tpl").render(ordered_json::array(), false, ordered_json::parse(vars));
}

TEST(JinjaFeatures, UndefinedRendersEmptyIsFalsyAndChainsThroughAttributes) {
  // jinja2 would raise on nothing.attr; bamba keeps it Undefined, so optional fields can be probed.
  EXPECT_EQ(render("[{{ nothing }}|{{ nothing.attr.deeper }}|{{ nothing.attr is defined }}|"
                   "{% if nothing %}x{% endif %}|{{ nothing['k'][0] }}|{{ nothing | length }}]"),
            "[||False|||0]");
  EXPECT_EQ(render("{% for x in nothing %}x{% else %}empty{% endfor %}"), "empty");
}

TEST(JinjaFeatures, StrftimeNow) {
  ChatTemplate t = ChatTemplate::parse("{{ strftime_now('%Y-%m-%d, %B %d, %d %b %Y') }}", "tpl");
  pin_clock(t);
  EXPECT_EQ(t.render(json::array(), false), "2024-07-15, July 15, 15 Jul 2024");
}

// ---------------------------------------------------------------------------------------------------------------
// Errors

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}
std::string parse_error(std::string_view source) {
  return error_of([&] { ChatTemplate::parse(source, "tpl"); });
}
std::string render_error(std::string_view source, const char* vars = "{}") {
  return error_of([&] { render(source, vars); });
}

TEST(JinjaErrors, SyntaxErrorsNameTheTemplateLineAndColumn) {
  EXPECT_EQ(parse_error("{% for m in messages %}\n{{ m }}"),
            "tpl:1:1: unclosed '{% for %}': expected '{% else %}' or '{% endfor %}' before the end of the template");
  EXPECT_EQ(parse_error("ok\n{% if x %}\n{% for a in b %}{% endif %}"), "tpl:3:20: unexpected 'endif'");
  EXPECT_EQ(parse_error("{{ x"), "tpl:1:1: unclosed '{{': missing '}}'");
  EXPECT_EQ(parse_error("{% if x %"), "tpl:1:1: unclosed '{%': missing '%}'");
  EXPECT_EQ(parse_error("text {# never closed"), "tpl:1:6: unclosed comment: missing '#}'");
  EXPECT_EQ(parse_error("a\n  {{ x | nosuchfilter }}"), "tpl:2:10: unknown filter 'nosuchfilter'");
  EXPECT_EQ(parse_error("{% if x is nosuchtest %}{% endif %}"), "tpl:1:12: unknown test 'nosuchtest'");
  EXPECT_EQ(parse_error("{{ 1 + }}"), "tpl:1:8: unexpected '}}'");
  EXPECT_EQ(parse_error("{{ (1 + 2 }}"), "tpl:1:11: unexpected '}', expected ')'");
  EXPECT_EQ(parse_error("{{ x ! y }}"), "tpl:1:6: unexpected character '!'");
  EXPECT_EQ(parse_error("{{ 'abc }}"), "tpl:1:4: unterminated string literal");
  EXPECT_EQ(parse_error("{% if a %}{% else %}{% elif b %}{% endif %}"), "tpl:1:24: unexpected 'elif'");
  EXPECT_EQ(parse_error("{% frobnicate %}"), "tpl:1:4: unknown tag 'frobnicate'");
  EXPECT_EQ(parse_error("{% include 'other.jinja' %}"),
            "tpl:1:4: '{% include %}' is not supported by bamba's chat template engine");
  EXPECT_EQ(parse_error("{% break %}"), "tpl:1:4: 'break' outside of a loop");
  EXPECT_EQ(parse_error("{% set x = 1 2 %}"), "tpl:1:14: expected '%}', got integer 2");
}

TEST(JinjaErrors, RuntimeErrorsCarryTheTemplatesMessageAndPosition) {
  const char* alternate =
      "{%- for message in messages %}\n"
      "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
      "        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\n"
      "    {%- endif %}\n"
      "{%- endfor %}";
  ChatTemplate t = ChatTemplate::parse(alternate, "mistral");
  EXPECT_EQ(t.render(json::parse(R"([{"role": "user", "content": "a"}])"), true), "");
  EXPECT_EQ(error_of([&] { t.render(json::parse(R"([{"role": "assistant", "content": "a"}])"), true); }),
            "mistral:3:13: Conversation roles must alternate user/assistant/user/assistant/...");
  EXPECT_EQ(render_error("{{ 'x'.nosuch() }}"), "tpl:1:8: 'str object' has no attribute 'nosuch'");
  EXPECT_EQ(render_error("{{ [1].append(2) }}"), "tpl:1:8: 'list object' has no attribute 'append'");
  EXPECT_EQ(render_error("{{ nothing() }}"), "tpl:1:4: 'nothing' is undefined");
  EXPECT_EQ(render_error("{{ 1 + 'a' }}"), "tpl:1:6: unsupported operand type(s) for +: 'int' and 'str'");
  EXPECT_EQ(render_error("{{ nothing + 1 }}"), "tpl:1:12: 'nothing' is undefined");
  EXPECT_EQ(render_error("{{ 1 // 0 }}"), "tpl:1:6: integer division or modulo by zero");
  EXPECT_EQ(render_error("{{ '' % 5 }}"), "tpl:1:7: not all arguments converted during string formatting");
  EXPECT_EQ(render_error("{{ 'a' < 1 }}"), "tpl:1:4: '<' not supported between instances of 'str' and 'int'");
  EXPECT_EQ(render_error("{{ 9223372036854775807 + 1 }}"), "tpl:1:24: integer overflow");
  EXPECT_EQ(render_error("{% set d = {} %}{% set d.x = 1 %}"),
            "tpl:1:17: cannot assign attribute 'x' on 'd', which is not a namespace()");
  EXPECT_EQ(render_error("{% for a, b in [[1]] %}{% endfor %}"), "tpl:1:1: cannot unpack 1 value(s) into 2 names");
  EXPECT_EQ(render_error("{{ 'x' | tojson(indent=none) | int(1, 2, 3) }}"), "tpl:1:32: int() takes at most 2 argument(s), 3 given");
  EXPECT_EQ(render_error("{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}"),
            "tpl:1:34: macro 'm' takes at most 1 argument(s), 2 given");
}

// ---------------------------------------------------------------------------------------------------------------
// Limits: every template ends, in bounded time and memory, with an Error rather than a hang or a crash.

std::string limited_error(std::string_view source, jinja::Limits limits = {}) {
  ChatTemplate t = ChatTemplate::parse(source, "tpl");
  t.limits = limits;
  auto start = std::chrono::steady_clock::now();
  std::string e = error_of([&] { t.render(json::array(), false); });
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(s, 60.0) << source;  // generous: sanitizer builds on a busy machine; a hang would be far longer
  return e;
}

TEST(JinjaLimits, DefaultsMatchTheSandboxAndTheBrief) {
  jinja::Limits d;
  EXPECT_EQ(d.max_range, 100000);  // jinja2's sandbox MAX_RANGE
  EXPECT_EQ(d.max_iterations, 1000000u);
  EXPECT_EQ(d.max_output, size_t(16) << 20);
}

TEST(JinjaLimits, EveryRunawayTemplateEndsInAnError) {
  EXPECT_EQ(limited_error("{{ range(10**9) | length }}"),
            "tpl:1:4: range() of more than 100000 items is refused (as in jinja2's sandbox)");
  jinja::Limits small;
  small.max_iterations = 50000;  // the default (1e6) behaves the same, only slower
  EXPECT_EQ(limited_error("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", small),
            "tpl:1:29: template exceeded 50000 loop iterations and macro calls");
  EXPECT_EQ(limited_error("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"),
            "tpl:1:29: rendered text exceeds the limit of 16777216 bytes");
  EXPECT_EQ(limited_error("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                          "{% endfor %}"),
            "tpl:1:75: string of 33554432 bytes exceeds the limit of 16777216");
  EXPECT_EQ(limited_error("{{ 'x' * 100000000 }}"), "tpl:1:8: string repetition exceeds the limit of 16777216 bytes");
  EXPECT_EQ(limited_error("{% set s = 'x' * 10000000 %}{% for i in range(100000) %}{% if s | length %}{% endif %}"
                          "{% endfor %}"),
            "tpl:1:67: template exceeded its work limit (268435456 units)");
  EXPECT_EQ(limited_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
            "tpl:1:20: template recursion deeper than 300 levels");
  EXPECT_EQ(limited_error("{% set ns = namespace(l=[]) %}{% for i in range(1000) %}{% set ns.l = [ns.l] %}"
                          "{% endfor %}"),
            "tpl:1:71: lists/dicts nested more than 128 deep");
  EXPECT_EQ(limited_error("{% set ns = namespace() %}{% set ns.me = ns %}"),
            "tpl:1:27: a Namespace cannot be stored inside a namespace");
  EXPECT_EQ(parse_error("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}"),
            "tpl:1:104: template nested more than 200 levels deep");
}

// ---------------------------------------------------------------------------------------------------------------
// ChatTemplate: messages, variables, content parts

TEST(ChatTemplateApi, ContentPartListsAreJoinedUnlessTheTemplateWalksThem) {
  auto messages = json::parse(R"([{"role": "user", "content": [{"type": "text", "text": "first"},
                                                               {"type": "text", "text": "second"}]}])");
  ChatTemplate chatml = ChatTemplate::parse(kChatML, "chatml");
  EXPECT_FALSE(chatml.takes_content_parts());
  EXPECT_EQ(chatml.render(messages, false), "<|im_start|>user\nfirst\nsecond<|im_end|>\n");
  ChatTemplate granite4 = ChatTemplate::parse(kGranite40, "granite4");
  EXPECT_TRUE(granite4.takes_content_parts());  // it joins the parts itself, with "\n"
  EXPECT_EQ(granite4.render(messages, false), "<|start_of_role|>user<|end_of_role|>first\nsecond<|end_of_text|>\n");
  ChatTemplate parts = ChatTemplate::parse("{% for p in messages[0].content %}[{{ p.type }}:{{ p.text }}]{% endfor %}", "p");
  EXPECT_EQ(parts.render(messages, false), "[text:first][text:second]");
  EXPECT_EQ(parts.render(json::parse(R"([{"role": "user", "content": "plain"}])"), false),
            "[:][:][:][:][:]");  // a string content iterates by character, as in jinja2
}

TEST(ChatTemplateApi, RejectsWhatATextModelCannotTake) {
  ChatTemplate t = ChatTemplate::parse(kChatML, "chatml");
  EXPECT_EQ(error_of([&] {
              t.render(json::parse(R"([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])"), true);
            }),
            "messages[0].content[0]: content type \"image_url\" is not supported (text only)");
  EXPECT_EQ(error_of([&] { t.render(json::parse(R"({"role": "user"})"), true); }), "chat messages must be a JSON array");
  EXPECT_EQ(error_of([&] { t.render(json::parse(R"(["hi"])"), true); }), "messages[0] must be an object");
  EXPECT_EQ(error_of([&] { t.render(json::array(), true, {{"messages", 1}}); }),
            "chat template variable \"messages\" cannot be overridden");
}

TEST(ChatTemplateApi, VariablesDefaultsAndOverrides) {
  ChatTemplate t = ChatTemplate::parse(
      "{{ bos_token }}|{{ eos_token }}|{{ tools is none }}|{{ documents is none }}|{{ add_generation_prompt }}|"
      "{{ date_string | default('no date') }}|{{ bos_token is defined }}",
      "vars");
  EXPECT_EQ(t.render(json::array(), true), "||True|True|True|no date|False");
  t.bos_token = "<s>";
  t.eos_token = "</s>";
  EXPECT_EQ(t.render(json::array(), false, {{"date_string", "1 Jan 2025"}}), "<s>|</s>|True|True|False|1 Jan 2025|True");
  EXPECT_EQ(t.render(json::array(), false, {{"bos_token", "B"}, {"tools", json::array()}}),
            "B|</s>|False|True|False|no date|True");
}

TEST(ChatTemplateApi, OrderedJsonKeepsTheClientsKeyOrderInTojson) {
  ChatTemplate t = ChatTemplate::parse("{{ tools | tojson }}", "t");
  const char* tools = R"([{"name": "f", "description": "d", "parameters": {}}])";
  EXPECT_EQ(t.render(ordered_json::array(), false, {{"tools", ordered_json::parse(tools)}}),
            R"([{"name": "f", "description": "d", "parameters": {}}])");
  EXPECT_EQ(t.render(json::array(), false, {{"tools", json::parse(tools)}}),  // nlohmann::json sorts its keys
            R"([{"description": "d", "name": "f", "parameters": {}}])");
}

// ---------------------------------------------------------------------------------------------------------------
// from_model_dir

struct TempDir {
  std::string path = test::make_temp_dir("chat");
  ~TempDir() { std::filesystem::remove_all(path); }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(path + "/" + name, std::ios::binary) << text;
  }
};

TEST(ChatTemplateModelDir, TokenizerConfigStringAndAddedTokenObjects) {
  TempDir d;
  json cfg = {{"chat_template", kZephyr},
              {"bos_token", {{"__type", "AddedToken"}, {"content", "<s>"}, {"lstrip", false}}},
              {"eos_token", "</s>"}};
  d.write("tokenizer_config.json", cfg.dump());
  auto t = ChatTemplate::from_model_dir(d.path);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->bos_token, "<s>");
  EXPECT_EQ(t->eos_token, "</s>");
  EXPECT_EQ(t->label(), d.path + "/tokenizer_config.json chat_template");
  EXPECT_EQ(t->render(json::parse(R"([{"role": "user", "content": "hi"}])"), true), "<|user|>\nhi</s>\n<|assistant|>\n");
}

TEST(ChatTemplateModelDir, NamedTemplateListTakesDefault) {
  TempDir d;
  json cfg = {{"chat_template", json::array({{{"name", "tool_use"}, {"template", "TOOLS"}},
                                             {{"name", "default"}, {"template", "DEFAULT {{ eos_token }}"}}})},
              {"eos_token", "</s>"}};
  d.write("tokenizer_config.json", cfg.dump());
  auto t = ChatTemplate::from_model_dir(d.path);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->render(json::array(), false), "DEFAULT </s>");

  cfg["chat_template"] = json::array({{{"name", "tool_use"}, {"template", "TOOLS"}}, {{"name", "rag"}, {"template", "R"}}});
  d.write("tokenizer_config.json", cfg.dump());
  EXPECT_EQ(error_of([&] { ChatTemplate::from_model_dir(d.path); }),
            d.path + "/tokenizer_config.json chat_template: no template named \"default\" (has: tool_use, rag)");
}

TEST(ChatTemplateModelDir, ChatTemplateJinjaWinsAndSpecialTokensMapFillsIn) {
  TempDir d;
  d.write("tokenizer_config.json", json({{"chat_template", "from config"}}).dump());
  d.write("chat_template.jinja", "from file {{ eos_token }}\n");
  d.write("special_tokens_map.json", json({{"eos_token", {{"content", "<|end|>"}}}}).dump());
  auto t = ChatTemplate::from_model_dir(d.path);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->label(), d.path + "/chat_template.jinja");
  EXPECT_FALSE(t->bos_token);
  EXPECT_EQ(t->render(json::array(), false), "from file <|end|>");
}

TEST(ChatTemplateModelDir, NoTemplateAndBadFiles) {
  TempDir d;
  EXPECT_FALSE(ChatTemplate::from_model_dir(d.path));  // an empty folder
  d.write("tokenizer_config.json", json({{"eos_token", "</s>"}, {"chat_template", nullptr}}).dump());
  EXPECT_FALSE(ChatTemplate::from_model_dir(d.path));
  d.write("tokenizer_config.json", "{not json");
  EXPECT_NE(error_of([&] { ChatTemplate::from_model_dir(d.path); }).find("tokenizer_config.json: invalid JSON"),
            std::string::npos);
  d.write("tokenizer_config.json", json({{"chat_template", "{% if %}"}}).dump());
  EXPECT_EQ(error_of([&] { ChatTemplate::from_model_dir(d.path); }),
            d.path + "/tokenizer_config.json chat_template:1:7: expected an expression, got '%}'");
}

}  // namespace
}  // namespace bamba
