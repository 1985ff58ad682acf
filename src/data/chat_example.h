// tokenize_chat: one SFT conversation ({"messages": [{role, content, ...}, ...], "tools": [...]?}) rendered with
// the model's chat template and tokenized, with a label mask that is 1 exactly on the assistant's tokens.
//
// The assistant's spans are found the way torchtune and TRL find them: by rendering prefixes of the
// conversation. For the assistant message i, the text before it is render(messages[0, i), add_generation_prompt)
// — everything up to and including the assistant header — and the text through it is render(messages[0, i]);
// the span between is the message's content and its end-of-turn marker, which the model must learn to emit. Both
// must be prefixes of the whole rendering; a template that renders earlier turns differently once later ones
// follow (e.g. one that drops the reasoning of earlier assistant turns) breaks that, and the conversation is a
// clear error rather than a guessed mask.
//
// The text is tokenized piece by piece, the pieces cut at the span boundaries, so that a token never straddles
// the boundary between context and target. Templates put those boundaries at special tokens or newlines, where
// the whole text's tokenization would cut too.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "chat/chat_template.h"

namespace bamba {

class Tokenizer;

struct ChatTokens {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;  // 1: an assistant token (a training target)
  int assistant_turns = 0;
};

// `where` names the conversation in errors ("chat.jsonl line 7"). `drop_prefix`: text removed from the front of
// the rendering when it starts with it (the template's BOS when the shard's separator already is that token).
ChatTokens tokenize_chat(const ChatTemplate& tmpl, const Tokenizer& tok, const nlohmann::ordered_json& conversation,
                         const std::string& where, const std::string& drop_prefix = "");

}  // namespace bamba
